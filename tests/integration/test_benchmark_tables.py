"""The benchmark's pure parts (benchmarks/run.py and the prediction figures of tests/harness/measure.py): which policy
runs on which fill, the ratio and prediction tables. No lab needed; here rather than in tests/unit because the
collection's tarball leaves benchmarks/ and tests/harness out."""
from __future__ import annotations

import os
import sys

import yaml

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import run as bench  # noqa: E402  pylint: disable=wrong-import-position
from measure import failure_message, prediction_figures  # noqa: E402  pylint: disable=wrong-import-position


def case(policy: str, fill: str = "words", workload: str = "light", link: str = "unlimited", runs=(), **figures
         ) -> dict:
    medians = {"completed": "1/1", "checks_pass": True, "postcopy": 0, **figures}
    return {"policy": policy, "workload": workload, "fill": fill, "link": link, "runs": list(runs),
            "medians": medians, "completed": medians["completed"]}


def test_every_playbook_variable_of_a_policy_is_an_option_of_the_live_migration_role():
    with open(os.path.join(REPO_ROOT, "roles", "live_migration", "meta", "argument_specs.yml"),
              encoding="utf-8") as handle:
        options = yaml.safe_load(handle)["argument_specs"]["main"]["options"]
    for policy, settings in bench.POLICIES.items():
        if not bench.is_libvirt(policy):
            assert set(settings) <= set(options), policy
            for variable, value in settings.items():
                assert value in options[variable].get("choices", [value]), (policy, variable)


def test_every_default_policy_exists_and_every_one_of_ours_has_a_libvirt_baseline():
    assert set(bench.DEFAULT_POLICIES) <= set(bench.POLICIES)
    ours = [policy for policy in bench.POLICIES if not bench.is_libvirt(policy)]
    assert set(ours) == set(bench.BASELINES)
    assert all(bench.is_libvirt(baseline) for baseline in bench.BASELINES.values())
    assert bench.BASELINES["auto-postcopy"] == "libvirt-postcopy"
    assert bench.POLICIES["auto-postcopy"] == {"livemig_convergence": "auto", "livemig_allow_postcopy": True}


def test_each_libvirt_policy_over_tls_is_its_cleartext_sibling_plus_tls():
    for policy in ("libvirt", "libvirt-autoconverge", "libvirt-postcopy"):
        assert bench.POLICIES[f"{policy}-tls"]["virsh"] == bench.POLICIES[policy]["virsh"] + ["--tls"]
        assert (bench.transport(policy), bench.transport(f"{policy}-tls")) == ("tcp", "tls")
        assert {policy, f"{policy}-tls"} <= set(bench.DEFAULT_POLICIES)


def test_our_policies_move_over_tls_unless_they_ask_for_tcp():
    assert {policy for policy in bench.BASELINES if bench.transport(policy) == "tcp"} == {"stateful-tcp", "auto-tcp"}


def test_each_of_our_policies_is_compared_only_with_libvirt_over_its_own_transport():
    for policy in bench.BASELINES:
        candidates = bench.baseline_candidates(policy)
        assert candidates and all(bench.is_libvirt(name) for name in candidates), policy
        assert {bench.transport(name) for name in candidates} == {bench.transport(policy)}, policy
    assert bench.baseline_candidates("auto") == ["libvirt-autoconverge-tls", "libvirt-tls"]
    assert bench.baseline_candidates("auto-tcp") == ["libvirt-autoconverge", "libvirt"]
    assert bench.baseline_candidates("auto-postcopy") == ["libvirt-postcopy-tls", "libvirt-tls"]
    assert bench.baseline_candidates("stateful") == ["libvirt-tls"]
    assert bench.baseline_candidates("stateful-tcp") == ["libvirt"]


def test_ratios_take_the_baseline_of_the_same_transport():
    cases = [case("auto", total_time_s=6.0), case("auto-tcp", total_time_s=3.0),
             case("libvirt-autoconverge", total_time_s=2.0), case("libvirt-autoconverge-tls", total_time_s=4.0)]
    rows = {row["policy"]: row for row in bench.ratios(cases)}
    assert rows["auto"]["baseline"] == "libvirt-autoconverge-tls" and rows["auto"]["total_time_s"] == 1.5
    assert rows["auto-tcp"]["baseline"] == "libvirt-autoconverge" and rows["auto-tcp"]["total_time_s"] == 1.5


def test_plain_libvirt_of_the_same_transport_stands_in_for_a_missing_baseline_and_the_other_transport_never():
    cases = [case("auto", total_time_s=6.0), case("auto-tcp", total_time_s=3.0),
             case("libvirt-autoconverge", total_time_s=2.0), case("libvirt-tls", total_time_s=3.0)]
    rows = {row["policy"]: row for row in bench.ratios(cases)}
    assert rows["auto"]["baseline"] == "libvirt-tls" and rows["auto"]["total_time_s"] == 2.0
    assert rows["auto-tcp"]["baseline"] == "libvirt-autoconverge"
    only_cleartext = bench.ratios([case("auto", total_time_s=6.0), case("libvirt-autoconverge", total_time_s=2.0),
                                   case("libvirt", total_time_s=2.0)])
    assert only_cleartext == [], "a TLS move is never compared with a cleartext one"


def test_the_ratio_table_names_the_baseline_of_every_row():
    cases = [case("auto", guest_visible_downtime_ms=200.0), case("auto-tcp", guest_visible_downtime_ms=90.0),
             case("libvirt-autoconverge", guest_visible_downtime_ms=90.0),
             case("libvirt-autoconverge-tls", guest_visible_downtime_ms=100.0)]
    table = bench.ratio_table(bench.ratios(cases))
    assert "| auto | libvirt-autoconverge-tls | light | words | unlimited | 2 |" in table
    assert "| auto-tcp | libvirt-autoconverge | light | words | unlimited | 1 |" in table


def test_only_compression_and_xbzrle_depend_on_the_fill():
    shrinking = {policy for policy in bench.POLICIES if bench.shrinks_pages(policy)}
    assert shrinking == {"auto-multifd-zstd", "auto-xbzrle"}


def test_the_words_fill_runs_every_policy_and_the_random_fill_those_that_shrink_pages_and_their_baseline():
    policies = list(bench.DEFAULT_POLICIES)
    assert bench.case_policies(policies, "words") == policies
    assert bench.case_policies(policies, "random") == ["auto-multifd-zstd", "auto-xbzrle",
                                                       "libvirt-autoconverge-tls"]


def test_the_random_fill_compares_with_plain_libvirt_of_the_same_transport_when_the_baseline_is_not_asked_for():
    assert bench.case_policies(["auto-xbzrle", "libvirt-tls", "libvirt-postcopy-tls"], "random") == [
        "auto-xbzrle", "libvirt-tls"]
    assert bench.case_policies(["auto-xbzrle", "libvirt", "libvirt-autoconverge"], "random") == ["auto-xbzrle"]
    assert bench.case_policies(["auto-xbzrle"], "random") == ["auto-xbzrle"]


def test_the_smoke_run_has_no_random_fill_case():
    assert bench.case_policies(["auto", "libvirt-tls"], "random") == []


def test_ratios_compare_each_fill_with_the_baseline_on_the_same_fill():
    cases = [case("auto-xbzrle", "words", total_time_s=10.0),
             case("libvirt-autoconverge-tls", "words", total_time_s=20.0),
             case("auto-xbzrle", "random", total_time_s=30.0),
             case("libvirt-autoconverge-tls", "random", total_time_s=60.0),
             case("auto-xbzrle", "random", link="1gbit", total_time_s=40.0),
             case("libvirt-autoconverge-tls", "words", link="1gbit", total_time_s=80.0)]
    rows = {(row["fill"], row["link"]): row for row in bench.ratios(cases)}
    assert set(rows) == {("words", "unlimited"), ("random", "unlimited")}, "no baseline on random over 1gbit"
    assert rows[("words", "unlimited")]["total_time_s"] == 0.5
    assert rows[("random", "unlimited")]["total_time_s"] == 0.5
    assert rows[("random", "unlimited")]["baseline"] == "libvirt-autoconverge-tls"


def test_the_tables_name_the_fill_of_every_row():
    cases = [case("auto", guest_visible_downtime_ms=100.0), case("libvirt-tls", guest_visible_downtime_ms=200.0),
             case("auto-xbzrle", "random")]
    assert "| auto | light | words | unlimited | 1/1 | 100 |" in bench.table(cases)
    assert "| auto-xbzrle | light | random | unlimited |" in bench.table(cases)
    ratio_table = bench.ratio_table(bench.ratios(cases))
    assert "| auto | libvirt-tls | light | words | unlimited | 0.5 |" in ratio_table
    assert "auto-xbzrle" not in ratio_table, "no libvirt case on the random fill"


def test_a_move_carries_its_prediction_and_the_relative_error():
    figures = prediction_figures({"strategy": "precopy", "predicted_total_s": 5.0, "actual_total_s": 4.0,
                                  "error_percent": 25.0})
    assert figures == {"strategy": "precopy", "predicted_total_s": 5.0, "actual_total_s": 4.0,
                       "prediction_error": 0.25}


def test_a_move_without_a_prediction_or_an_actual_time_has_no_error():
    assert prediction_figures(None) == {"strategy": None, "predicted_total_s": None, "actual_total_s": None,
                                        "prediction_error": None}
    assert prediction_figures({"strategy": "postcopy", "predicted_total_s": 3.0, "actual_total_s": None}
                              )["prediction_error"] is None
    assert prediction_figures({"strategy": "precopy", "predicted_total_s": None, "actual_total_s": 4.0}
                              )["prediction_error"] is None


def test_the_medians_of_a_case_take_the_prediction_figures_of_its_moves():
    runs = [{"completed": True, "checks": {"ok": True}, "predicted_total_s": p, "actual_total_s": a,
             "prediction_error": e} for p, a, e in ((4.0, 5.0, -0.2), (6.0, 5.0, 0.2), (9.0, 6.0, 0.5))]
    figures = bench.medians(runs)
    assert (figures["predicted_total_s"], figures["actual_total_s"], figures["prediction_error"]) == (6.0, 5.0, 0.2)


def test_the_prediction_table_has_a_row_per_predicted_case_of_ours():
    runs = [{"strategy": "precopy"}, {"strategy": "postcopy"}, {"strategy": None}]
    cases = [case("auto-postcopy", workload="heavy", link="1gbit", runs=runs, predicted_total_s=12.0,
                  actual_total_s=10.0, prediction_error=0.2),
             case("auto", runs=[{"strategy": "precopy"}], predicted_total_s=3.0, actual_total_s=None,
                  prediction_error=None),
             case("libvirt-postcopy", workload="heavy", link="1gbit")]
    rows = bench.predictions(cases)
    assert [row["policy"] for row in rows] == ["auto-postcopy", "auto"]
    assert rows[0]["strategy"] == "postcopy/precopy"
    table = bench.prediction_table(rows)
    assert "| auto-postcopy | heavy | words | 1gbit | postcopy/precopy | 12.0 | 10.0 | +20 |" in table
    assert "| auto | light | words | unlimited | precopy | 3.0 | - | - |" in table
    assert "libvirt" not in table


def test_a_failed_move_is_recorded_by_the_message_of_its_failed_task():
    output = ("TASK [livemig.qemu.live_migration : Stop when the VM cannot move] ***\n"
              "fatal: [hv1]: FAILED! => changed=false\n"
              "  msg: |-\n"
              "    Cannot live-migrate b1: no live strategy fits.\n"
              "    Options: livemig_allow_postcopy: true\n"
              "  other: 1\n\nTASK [Give back the VM's lease on the target] ***\nok: [hv1]\n")
    assert failure_message(output) == ("Cannot live-migrate b1: no live strategy fits. "
                                       "Options: livemig_allow_postcopy: true")
    assert failure_message("PLAY RECAP\nhv1 : ok=3 failed=0\n") == "PLAY RECAP\nhv1 : ok=3 failed=0\n"
