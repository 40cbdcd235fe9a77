"""The migration planner over a table of host-fact pairs: every method, every reason, every fallback rule."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._negotiate import (
    PlanError, make_plan, needs_kvm_check, no_method_reason)

CAPS_10 = ["auto-converge", "events", "multifd", "pause-before-switchover", "postcopy-ram", "return-path", "xbzrle"]
CAPS_OLD = ["events", "xbzrle"]  # an imaginary very old QEMU: no pause-before-switchover, no postcopy


def facts(version, machines, caps=None, kvm=False, memory=8192, cpus=None, transports=None):
    """Trimmed qemu_facts of one host; the 7.2 here stands for a build without zstd (Debian's has it)."""
    return {
        "multifd_compressions": ["none", "zlib", "zstd"] if version.startswith("10") else ["none", "zlib"],
        "version": version,
        "machines": [{"name": name, "alias": alias} for name, alias in machines],
        "cpu_models": cpus if cpus is not None else [
            {"name": "qemu64", "runnable": True, "migration_safe": True},
            {"name": "max", "runnable": True, "migration_safe": False},
            {"name": "Icelake-Server", "runnable": False, "migration_safe": True}],
        "migration_capabilities": CAPS_10 if caps is None else caps,
        "accelerators": {"kvm": {"usable": kvm, "reason": "ok" if kvm else "/dev/kvm is missing"},
                         "tcg": {"usable": True}},
        "auto_accel": "kvm" if kvm else "tcg",
        "memory": {"total_mb": memory, "available_mb": memory},
        "state_transports": transports or (["exec", "file"] if version.startswith("10") else ["exec"]),
    }


def MODEL(name, *lacking):  # noqa: N802 - reads as the facts' entry it builds
    return {"name": name, "runnable": not lacking, "migration_safe": True, "unavailable_features": list(lacking)}


QEMU_10 = [("pc-q35-10.0", "q35"), ("pc-q35-7.2", None), ("pc-i440fx-10.0", "pc"), ("pc-i440fx-7.2", None)]
QEMU_72 = [("pc-q35-7.2", "q35"), ("pc-i440fx-7.2", "pc")]


def request(source_facts=None, target_facts=None, machine="pc-q35-10.0", accel="tcg", disks=None, storage=None,
            wishes=None, source_policy=None, target_policy=None, spec=None, address="198.18.0.102",
            on_target=None, source_storage=None, locations=None):
    source_facts = copy.deepcopy(source_facts or facts("10.0.2", QEMU_10))
    source_facts["vms"] = {"web1": {"machine": machine, "accel": accel, "status": "running", "owner": True,
                                    "running": True}}
    target_facts = copy.deepcopy(target_facts or facts("10.0.2", QEMU_10))
    if on_target is not None:
        target_facts["vms"] = {"web1": on_target}
    spec = {"memory_mb": 512, "vcpus": 1, "machine": "q35", "cpu_model": "qemu64", "accel": "auto",
            "disks": [{"name": "root", "size_mb": 1024}] if disks is None else disks, **(spec or {})}
    where = locations or {}
    return {"vm": "web1", "spec": spec,
            "source": {"name": "hv1", "facts": source_facts, "policy": source_policy, "address": "198.18.0.101",
                       "locations": where.get("hv1")},
            "target": {"name": "hv2", "facts": target_facts, "policy": target_policy,
                       "address": address, "locations": where.get("hv2")},
            "storage": storage or {}, "source_storage": source_storage or {}, "wishes": wishes or {},
            "tls_check": {"problems": [], "source_dn": "CN=hv1", "target_dn": "CN=hv2", "target_hostname": address}}


def reasons(plan, method):
    return plan["methods"][method]["reasons"]


# Each row: id, request, expected method, {method: a fragment expected in one of its reasons}.
CASES = [
    ("same QEMU, local disk", request(), "live-mirror",
     {"live-shared": "disk root is local"}),
    ("all disks shared", request(disks=[{"name": "root", "size_mb": 1, "shared": True}],
                                 storage={"root": {"same_file": True}}), "live-shared",
     {"live-mirror": "no local disk to mirror"}),
    ("no disks at all", request(disks=[]), "live-shared", {"live-mirror": "no local disk"}),
    ("same file found though not declared shared", request(storage={"root": {"same_file": True}}), "live-shared",
     {}),
    ("declared shared but not the same file", request(disks=[{"name": "root", "size_mb": 1, "shared": True}],
                                                      storage={"root": {"same_file": False}}, wishes={"allow_cold": True}),
     None, {"live-shared": "declared shared but is not the same file", "stateful": "declared shared",
            "cold": "declared shared"}),
    ("10.0 -> 7.2 with a machine type both know", request(target_facts=facts("7.2.0", QEMU_72),
                                                          machine="pc-q35-7.2"), "live-mirror", {}),
    ("10.0-only machine type to 7.2, cold not allowed", request(target_facts=facts("7.2.0", QEMU_72)), None,
     {"live-mirror": "QEMU 7.2.0 on hv2 has no machine type pc-q35-10.0",
      "stateful": "QEMU 7.2.0 on hv2 has no machine type pc-q35-10.0", "cold": "needs livemig_allow_cold=true"}),
    ("10.0-only machine type to 7.2, cold allowed", request(target_facts=facts("7.2.0", QEMU_72),
                                                            wishes={"allow_cold": True}), "cold",
     {"stateful": "no machine type pc-q35-10.0"}),
    ("versioned 10.0 machine in the spec: not even cold",
     request(target_facts=facts("7.2.0", QEMU_72), spec={"machine": "pc-q35-10.0"}, wishes={"allow_cold": True}),
     None, {"cold": "QEMU 7.2.0 on hv2 has no machine type pc-q35-10.0"}),
    ("KVM guest, no KVM on the target", request(accel="kvm", wishes={"allow_cold": True}), "cold",
     {"live-mirror": "KVM is not usable on hv2", "stateful": "KVM is not usable on hv2"}),
    ("KVM guest, KVM spec, no KVM anywhere", request(accel="kvm", spec={"accel": "kvm"}, wishes={"allow_cold": True}),
     None, {"cold": "KVM is not usable on hv2"}),
    ("CPU model missing on the target", request(spec={"cpu_model": "EPYC-Genoa"}), None,
     {"live-mirror": "has no CPU model EPYC-Genoa", "stateful": "has no CPU model EPYC-Genoa"}),
    ("CPU model the target lacks features of", request(
        source_facts=facts("10.0.2", QEMU_10, cpus=[MODEL("Icelake-Server")]),
        target_facts=facts("10.0.2", QEMU_10, cpus=[MODEL("Icelake-Server", "avx512f", "svm")]),
        spec={"cpu_model": "Icelake-Server"}, wishes={"allow_cold": True}), "cold",
     {"live-mirror": "CPU model Icelake-Server on hv2 lacks avx512f, svm, which the guest has on hv1",
      "stateful": "lacks avx512f, svm"}),
    ("CPU model both hosts lack the same features of (qemu64's svm on Intel KVM)", request(
        source_facts=facts("10.0.2", QEMU_10, cpus=[MODEL("qemu64", "svm")]),
        target_facts=facts("10.0.2", QEMU_10, cpus=[MODEL("qemu64", "svm")])), "live-mirror", {}),
    ("CPU model not runnable on the target, as facts of 0.3 say it", request(
        source_facts=facts("10.0.2", QEMU_10, cpus=[{"name": "Icelake-Server", "runnable": True}]),
        spec={"cpu_model": "Icelake-Server"}), None, {"live-mirror": "lacks some of its features"}),
    ("CPU model not migration-safe: only cold", request(spec={"cpu_model": "max"}, wishes={"allow_cold": True}), "cold",
     {"live-mirror": "not migration-safe", "stateful": "not migration-safe"}),
    ("not enough memory on the target", request(target_facts=facts("10.0.2", QEMU_10, memory=256),
                                                wishes={"allow_cold": True}), None,
     {"live-mirror": "needs 512 MiB", "stateful": "needs 512 MiB", "cold": "has only 256 MiB"}),
    ("no migration address", request(address=""), None,
     {"live-mirror": "no migration address", "stateful": "no migration address"}),
    ("no migration address, all shared: cold needs no copy", request(
        address="", disks=[{"name": "root", "size_mb": 1, "shared": True}], storage={"root": {"same_file": True}},
        wishes={"allow_cold": True}), "cold", {"live-shared": "no migration address"}),
    ("source lacks pause-before-switchover: falls back to stateful",
     request(source_facts=facts("2.10", QEMU_10, caps=CAPS_OLD)),
     "stateful", {"live-mirror": "lacks the pause-before-switchover capability"}),
    ("target lacks events", request(target_facts=facts("10.0.2", QEMU_10, caps=["xbzrle"])), "stateful",
     {"live-mirror": "QEMU 10.0.2 on hv2 lacks the events capability"}),
    ("no fallback allowed", request(source_facts=facts("2.10", QEMU_10, caps=CAPS_OLD),
                                    wishes={"allow_fallback": False}), None,
     {"stateful": "livemig_allow_fallback is false"}),
    ("stateful asked for", request(wishes={"method": "stateful"}), "stateful",
     {"live-mirror": "not tried: livemig_method is stateful"}),
    ("cold asked for", request(wishes={"method": "cold"}), "cold", {"stateful": "not tried: livemig_method is cold"}),
    ("live asked for, no fallback, live works", request(wishes={"method": "live", "allow_fallback": False}),
     "live-mirror", {}),
    ("target refuses live by policy", request(target_policy={"methods": ["stateful", "cold"]}), "stateful",
     {"live-mirror": "live migration disabled by host policy on hv2"}),
    ("source refuses everything but cold", request(source_policy={"methods": ["cold"]}, wishes={"allow_cold": True}),
     "cold", {"stateful": "stateful migration disabled by host policy on hv1"}),
]


@pytest.mark.parametrize("req,method,expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_plan_table(req, method, expected):
    plan = make_plan(req)
    assert plan["method"] == method, plan["summary"]
    assert plan["possible"] is (method is not None)
    if method:
        assert plan["methods"][method]["possible"] and plan["methods"][method]["reasons"] == []
    for other, fragment in expected.items():
        verdict = plan["methods"][other]
        text = " | ".join(verdict["reasons"] + [verdict["not_tried"]])
        assert fragment in text, (other, text)
        assert f"  {other}: " in "\n".join(plan["summary"])


def test_methods_are_tried_in_order_and_only_when_allowed():
    plan = make_plan(request(wishes={"method": "stateful", "allow_cold": True}))
    assert [m for m, v in plan["methods"].items() if v["tried"]] == ["stateful", "cold"]
    assert plan["method"] == "stateful"
    plan = make_plan(request(wishes={"method": "stateful", "allow_fallback": False, "allow_cold": True}))
    assert [m for m, v in plan["methods"].items() if v["tried"]] == ["stateful"]


def test_cold_resolves_the_spec_machine_on_the_target():
    plan = make_plan(request(target_facts=facts("7.2.0", QEMU_72), wishes={"allow_cold": True}))
    assert (plan["machine"], plan["accel"]) == ("pc-q35-7.2", "tcg")
    assert plan["disks"] == [{"name": "root", "format": "qcow2", "kind": "file", "shared": False,
                              "action": "copy", "reason": "disk root is local to the source"}]
    assert plan["streams"] == {"kind": "restart", "copy": "nbd", "address": "198.18.0.102"}


def test_live_keeps_the_pinned_machine_and_mirrors():
    plan = make_plan(request(target_facts=facts("7.2.0", QEMU_72), machine="pc-q35-7.2"))
    assert (plan["machine"], plan["accel"], plan["cpu_model"]) == ("pc-q35-7.2", "tcg", "qemu64")
    assert plan["disks"][0]["action"] == "mirror"
    assert plan["streams"] == {"kind": "tcp", "address": "198.18.0.102", "disks": "nbd"}
    assert plan["versions"] == {"hv1": "10.0.2", "hv2": "7.2.0"}


def test_stateful_transport_follows_each_qemu():
    plan = make_plan(request(target_facts=facts("7.2.0", QEMU_72), machine="pc-q35-7.2",
                             wishes={"method": "stateful"}))
    assert plan["streams"]["save"] == "file" and plan["streams"]["load"] == "exec"
    assert plan["disks"][0]["action"] == "copy"
    assert plan["capabilities"]["source"] == [] and plan["capabilities"]["target"] == []


def test_detected_shared_disk_is_shared_in_the_move_spec():
    plan = make_plan(request(storage={"root": {"same_file": True}}))
    assert plan["spec"]["disks"] == [{"name": "root", "size_mb": 1024, "shared": True}]
    assert "shared storage detected" in plan["disks"][0]["reason"]
    assert plan["disks"][0]["action"] == "shared"


def test_capabilities_intersection_policy_and_wishes():
    target = facts("10.0.2", QEMU_10, caps=["events", "multifd", "postcopy-ram", "return-path"])
    plan = make_plan(request(target_facts=target,
                             target_policy={"deny_capabilities": ["postcopy-ram"]},
                             wishes={"capabilities": ["multifd", "postcopy-ram", "auto-converge", "xbzrle"],
                                     "capabilities_deny": ["return-path"]}))
    caps = plan["capabilities"]
    assert caps["usable"] == ["multifd", "auto-converge"]
    assert caps["unusable"] == {"postcopy-ram": "postcopy-ram disabled by host policy on hv2",
                                "xbzrle": "xbzrle not supported by QEMU 10.0.2 on hv2",
                                "return-path": "return-path denied by livemig_capabilities_deny"}
    assert caps["source"] == ["auto-converge", "events", "multifd", "pause-before-switchover"]
    assert caps["target"] == ["events", "multifd"], "auto-converge is the source's business only"
    assert "  postcopy-ram disabled by host policy on hv2" in plan["summary"]


def test_capabilities_allow_list():
    caps = make_plan(request(wishes={"capabilities_allow": ["multifd"]}))["capabilities"]
    assert caps["usable"] == ["multifd"]
    assert caps["unusable"]["postcopy-ram"] == "postcopy-ram not in livemig_capabilities_allow"


def test_live_shared_needs_no_pause_before_switchover():
    plan = make_plan(request(disks=[]))
    assert plan["capabilities"]["source"] == ["events"]


def test_summary_of_an_impossible_plan_lists_every_reason():
    plan = make_plan(request(target_facts=facts("7.2.0", QEMU_72, memory=128)))
    text = "\n".join(plan["summary"])
    assert "no method is possible" in plan["summary"][0]
    for fragment in ("no machine type pc-q35-10.0", "needs 512 MiB", "livemig_allow_cold"):
        assert fragment in text


@pytest.mark.parametrize("wishes,policy,message", [
    ({"method": "teleport"}, None, "livemig_method must be one of"),
    ({"allow_fallback": "yes"}, None, "livemig_allow_fallback must be true or false"),
    ({"capabilities": ["warp"]}, None, "unknown capabilities ['warp']"),
    ({"capabilities_deny": "postcopy-ram"}, None, "must be a list of names"),
    ({"colour": "blue"}, None, "unknown wishes"),
    ({"multifd_channels": -1}, None, "livemig_multifd_channels must be a whole number"),
    ({"xbzrle_cache_mb": True}, None, "livemig_xbzrle_cache_mb must be a whole number"),
    ({"multifd_compression": 3}, None, "livemig_multifd_compression must be a name"),
    ({"convergence": "hope"}, None, "livemig_convergence must be one of defaults, auto, postcopy-early"),
    ({"allow_postcopy": "no"}, None, "livemig_allow_postcopy must be true or false"),
    ({"max_downtime_ms": -5}, None,
     "livemig_max_downtime_ms must be a whole number from 1 to 2000000 (milliseconds; QEMU allows at most 2000 s), "
     "got -5"),
    ({"max_downtime_ms": 2000001}, None, "livemig_max_downtime_ms must be a whole number from 1 to 2000000"),
    ({"max_bandwidth": -1}, None,
     "livemig_max_bandwidth must be a whole number from 0 to 9223372036854775807 (bytes per second, 0 for no cap), "
     "got -1"),
    ({"max_bandwidth": "-1"}, None, "livemig_max_bandwidth must be a whole number from 0"),
    ({"max_bandwidth": "fast"}, None, "livemig_max_bandwidth must be a whole number from 0"),
    ({"progress_interval": 0}, None,
     "livemig_progress_interval must be a whole number from 1 to 3600 (seconds between two progress lines), got 0"),
    ({"migration_timeout": 0}, None, "livemig_migration_timeout must be a whole number of at least 1 (seconds), got 0"),
    ({"mirror_timeout": -3600}, None, "livemig_mirror_timeout must be a whole number of at least 1 (seconds)"),
    ({"stall_timeout": 0}, None, "livemig_stall_timeout must be a whole number of at least 1 (seconds), got 0"),
    ({"guest_ping_timeout": -1}, None, "livemig_guest_ping_timeout must be a whole number of at least 1 (seconds)"),
    ({"powerdown_timeout": -1}, None, "livemig_powerdown_timeout must be a whole number of at least 0 (seconds, 0 to "
                                      "quit the guest at once), got -1"),
    ({"stall_timeout": 1.5}, None, "livemig_stall_timeout must be a whole number of at least 1"),
    ({}, {"methods": ["teleport"]}, "livemig_host_policy.methods of hv2"),
    ({}, {"deny": ["postcopy-ram"]}, "livemig_host_policy of hv2 must be a dict"),
    ({}, "no", "livemig_host_policy of hv2 must be a dict"),
])
def test_bad_wishes_and_policies_are_named(wishes, policy, message):
    with pytest.raises(PlanError, match=None) as error:
        make_plan(request(wishes=wishes, target_policy=policy))
    assert message in str(error.value)


def test_numbers_from_extra_vars_may_be_strings_of_digits():
    """`-e livemig_max_downtime_ms=500` gives the role the string '500', which its argument specs accept as int."""
    assert make_plan(request(wishes={"max_downtime_ms": "500", "progress_interval": " 2 "}))["possible"] is True


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "0:0::0"])
def test_a_wildcard_migration_address_is_refused_for_every_method_that_listens(address):
    plan = make_plan(request(address=address))
    why = (f"the migration address of hv2 is {address}, which listens on every interface: set "
           "livemig_migration_address to the one address of the host on the migration network")
    assert plan["possible"] is False and plan["situation"]["kind"] == "refuse"
    assert why in reasons(plan, "live-mirror") and why in reasons(plan, "stateful")
    assert why in plan["situation"]["message"]


def test_a_migration_address_the_target_does_not_have_is_refused_naming_the_host():
    built = request(address="198.18.0.199")
    built["host_checks"] = {"target": {"address": {"address": "198.18.0.199", "bindable": False,
                                                   "reason": "this host has no such address (EADDRNOTAVAIL)"}}}
    plan = make_plan(built)
    why = ("hv2 cannot listen on its migration address 198.18.0.199 (livemig_migration_address): this host has no "
           "such address (EADDRNOTAVAIL)")
    assert plan["possible"] is False and why in reasons(plan, "live-mirror") and why in plan["situation"]["message"]
    built["host_checks"]["target"]["address"]["bindable"] = True
    assert make_plan(built)["method"] == "live-mirror"


def test_a_live_move_gives_the_targets_fresh_disks_the_sources_real_sizes():
    """The inventory says 1024 and 64 MiB; the source's images are larger (grown, or made elsewhere)."""
    marked = {**MARKED, "root": {**MARKED["root"], "virtual_size": 3 << 30}}
    plan = make_plan(request(disks=TWO_DISKS, storage=CHECKED, source_storage=marked, locations=LOCATIONS))
    assert plan["method"] == "live-mirror"
    assert plan["disk_sizes"] == {"root": 3 << 30, "data": 64 << 20}, "not the shared disk, not size_mb"
    assert make_plan(copy_request(method="stateful"))["disk_sizes"] == {}, "the copies carry their own sizes"


def test_multifd_with_channels_and_zstd_on_both_sides():
    plan = make_plan(request(wishes={"multifd_channels": 4, "multifd_compression": "zstd"}))
    assert "multifd" in plan["capabilities"]["source"] and "multifd" in plan["capabilities"]["target"]
    assert plan["parameters"] == {"source": {"multifd-channels": 4, "multifd-compression": "zstd"},
                                  "target": {"multifd-channels": 4, "multifd-compression": "zstd"}}


def test_zstd_missing_on_one_side_leaves_compression_out():
    plan = make_plan(request(target_facts=facts("7.2.0", QEMU_72), machine="pc-q35-7.2",
                             wishes={"multifd_channels": 2, "multifd_compression": "zstd"}))
    assert plan["parameters"]["target"] == {"multifd-channels": 2}
    assert plan["capabilities"]["unusable"]["multifd-compression zstd"] == \
        "multifd-compression zstd not supported by QEMU 7.2.0 on hv2"


def test_compression_without_multifd_is_named():
    plan = make_plan(request(wishes={"multifd_compression": "zstd"}))
    assert "needs multifd" in plan["capabilities"]["unusable"]["multifd-compression zstd"]
    assert plan["parameters"] == {"source": {}, "target": {}}


def test_qemu_refuses_multifd_with_postcopy_or_xbzrle_so_the_first_asked_wins():
    plan = make_plan(request(wishes={"capabilities": ["multifd", "postcopy-ram", "auto-converge"],
                                     "xbzrle_cache_mb": 64}))
    caps = plan["capabilities"]
    assert caps["source"] == ["auto-converge", "events", "multifd", "pause-before-switchover"]
    assert caps["unusable"]["postcopy-ram"] == ("postcopy-ram left out: QEMU cannot combine it with multifd "
                                                "(multifd and post-copy together need QEMU 10.1 on both hosts; "
                                                "QEMU 10.0.2 on hv1)")
    assert caps["unusable"]["xbzrle"] == "xbzrle left out: QEMU cannot combine it with multifd"
    plan = make_plan(request(wishes={"capabilities": ["postcopy-ram"], "xbzrle_cache_mb": 64}))
    assert plan["capabilities"]["source"] == ["events", "pause-before-switchover", "postcopy-ram", "xbzrle"]
    assert plan["parameters"] == {"source": {"xbzrle-cache-size": 64 << 20}, "target": {}}


CAPS_POSTCOPY = [*CAPS_10, "postcopy-blocktime", "postcopy-preempt"]

# Each row: id, source facts, target facts, wishes, the capabilities the source gets, the target's, and the reason
# given for what was left out ({} when nothing was).
POSTCOPY_CASES = [
    ("preempt on both ends, blocktime on the target", facts("10.0.2", QEMU_10, caps=CAPS_POSTCOPY),
     facts("10.0.2", QEMU_10, caps=CAPS_POSTCOPY), {"convergence": "postcopy-early"},
     ["events", "pause-before-switchover", "postcopy-preempt", "postcopy-ram"],
     ["events", "postcopy-blocktime", "postcopy-preempt", "postcopy-ram"], {}),
    ("no preempt where one QEMU lacks it", facts("10.0.2", QEMU_10, caps=CAPS_POSTCOPY),
     facts("10.0.2", QEMU_10, caps=[*CAPS_10, "postcopy-blocktime"]), {"allow_postcopy": True},
     ["events", "pause-before-switchover", "postcopy-ram"], ["events", "postcopy-blocktime", "postcopy-ram"], {}),
    ("neither without post-copy", facts("10.0.2", QEMU_10, caps=CAPS_POSTCOPY),
     facts("10.0.2", QEMU_10, caps=CAPS_POSTCOPY), {"convergence": "auto"},
     ["auto-converge", "events", "pause-before-switchover"], ["events"], {}),
    ("multifd with post-copy on QEMU 10.1 at both ends", facts("10.1.0", QEMU_10), facts("10.1.0", QEMU_10),
     {"convergence": "postcopy-early", "multifd_channels": 2},
     ["events", "multifd", "pause-before-switchover", "postcopy-ram"], ["events", "multifd", "postcopy-ram"], {}),
    ("multifd left out when one end is QEMU 10.0", facts("10.1.0", QEMU_10), facts("10.0.2", QEMU_10),
     {"convergence": "postcopy-early", "multifd_channels": 2},
     ["events", "pause-before-switchover", "postcopy-ram"], ["events", "postcopy-ram"],
     {"multifd": "multifd left out: QEMU cannot combine it with postcopy-ram (multifd and post-copy together need "
                 "QEMU 10.1 on both hosts; QEMU 10.0.2 on hv2)"}),
    ("multifd left out with QEMU 7.2, which takes both but cannot run them", facts("7.2.0", QEMU_72),
     facts("10.1.0", QEMU_10), {"allow_postcopy": True, "multifd_channels": 2},
     ["events", "pause-before-switchover", "postcopy-ram"], ["events", "postcopy-ram"],
     {"multifd": "multifd left out: QEMU cannot combine it with postcopy-ram (multifd and post-copy together need "
                 "QEMU 10.1 on both hosts; QEMU 7.2.0 on hv1)"}),
]


@pytest.mark.parametrize("source_facts,target_facts,wishes,source_caps,target_caps,left_out",
                         [case[1:] for case in POSTCOPY_CASES], ids=[case[0] for case in POSTCOPY_CASES])
def test_postcopy_capabilities(source_facts, target_facts, wishes, source_caps, target_caps, left_out):
    machine = "pc-q35-7.2" if source_facts["version"].startswith("7") else "pc-q35-10.0"
    plan = make_plan(request(source_facts=source_facts, target_facts=target_facts, machine=machine, wishes=wishes))
    caps = plan["capabilities"]
    assert plan["method"] == "live-mirror"
    assert (caps["source"], caps["target"]) == (source_caps, target_caps)
    assert {key: caps["unusable"][key] for key in left_out} == left_out
    assert "multifd" not in caps["unusable"] or left_out
    if "multifd" in source_caps:
        assert plan["parameters"]["source"] == plan["parameters"]["target"] == {"multifd-channels": 2}


def test_stateful_and_cold_use_no_migration_parameters():
    plan = make_plan(request(wishes={"method": "stateful", "multifd_channels": 4}))
    assert plan["parameters"] == {"source": {}, "target": {}}


# Each row: id, wishes, the capabilities the source gets, the target's. The convergence policy adds what it needs,
# after livemig_capabilities and before multifd/XBZRLE, so that the first asked for still wins a clash.
CONVERGENCE_CASES = [
    ("defaults adds nothing", {"convergence": "defaults"}, ["events", "pause-before-switchover"], ["events"]),
    ("auto adds auto-converge, the source's only", {"convergence": "auto"},
     ["auto-converge", "events", "pause-before-switchover"], ["events"]),
    ("auto with post-copy allowed", {"convergence": "auto", "allow_postcopy": True},
     ["auto-converge", "events", "pause-before-switchover", "postcopy-ram"], ["events", "postcopy-ram"]),
    ("postcopy-early asks for post-copy by itself", {"convergence": "postcopy-early"},
     ["events", "pause-before-switchover", "postcopy-ram"], ["events", "postcopy-ram"]),
    ("allowed post-copy under defaults", {"convergence": "defaults", "allow_postcopy": True},
     ["events", "pause-before-switchover", "postcopy-ram"], ["events", "postcopy-ram"]),
    ("multifd asked for first beats the policy's post-copy",
     {"capabilities": ["multifd"], "convergence": "postcopy-early"},
     ["events", "multifd", "pause-before-switchover"], ["events", "multifd"]),
    ("the policy's post-copy beats multifd from multifd_channels",
     {"convergence": "postcopy-early", "multifd_channels": 2},
     ["events", "pause-before-switchover", "postcopy-ram"], ["events", "postcopy-ram"]),
]


@pytest.mark.parametrize("wishes,source_caps,target_caps", [case[1:] for case in CONVERGENCE_CASES],
                         ids=[case[0] for case in CONVERGENCE_CASES])
def test_convergence_wishes_ask_for_their_capabilities(wishes, source_caps, target_caps):
    caps = make_plan(request(wishes=wishes))["capabilities"]
    assert (caps["source"], caps["target"]) == (source_caps, target_caps)


def test_convergence_needs_are_left_out_like_any_other_capability():
    plan = make_plan(request(wishes={"convergence": "auto", "allow_postcopy": True},
                             target_policy={"deny_capabilities": ["postcopy-ram"]}))
    assert plan["capabilities"]["source"] == ["auto-converge", "events", "pause-before-switchover"]
    assert plan["capabilities"]["unusable"]["postcopy-ram"] == "postcopy-ram disabled by host policy on hv2"


LOCATIONS = {"hv1": {"run_dir": "/run/a", "image_dir": "/img/a", "state_dir": "/state/a", "shared_dir": "",
                     "qemu_binary": "qemu-system-x86_64"},
             "hv2": {"run_dir": "/run/b", "image_dir": "/img/b", "state_dir": "", "shared_dir": "/net/b",
                     "qemu_binary": "/opt/qemu/bin/qemu-system-x86_64"}}
TWO_DISKS = [{"name": "root", "size_mb": 1024}, {"name": "data", "size_mb": 64, "format": "raw"},
             {"name": "iso", "size_mb": 8, "shared": True}]
MARKED = {"root": {"path": "/img/a/web1-root.qcow2", "exists": True, "virtual_size": 1 << 30},
          "data": {"path": "/img/a/web1-data.raw", "exists": True, "virtual_size": 64 << 20},
          "iso": {"path": "/net/a/web1-iso.qcow2", "exists": True, "virtual_size": 8 << 20}}
CHECKED = {"root": {"path": "/img/b/web1-root.qcow2", "exists": False, "same_file": False},
           "data": {"path": "/img/b/web1-data.raw", "exists": False, "same_file": False},
           "iso": {"path": "/net/b/web1-iso.qcow2", "exists": True, "same_file": True}}
COPIES = [{"label": "root", "source": "/img/a/web1-root.qcow2", "target": "/img/b/web1-root.qcow2",
           "format": "qcow2", "size": 1 << 30, "kind": "file"},
          {"label": "data", "source": "/img/a/web1-data.raw", "target": "/img/b/web1-data.raw", "format": "raw",
           "size": 64 << 20, "kind": "file"}]


DISK_RECEIVERS = [{"label": "root", "path": "/img/b/web1-root.qcow2", "format": "qcow2", "size": 1 << 30},
                  {"label": "data", "path": "/img/b/web1-data.raw", "format": "raw", "size": 64 << 20}]


def copy_request(**wishes):
    return request(disks=TWO_DISKS, storage=CHECKED, source_storage=MARKED, locations=LOCATIONS, wishes=wishes)


# Each row: id, method asked for, expected family, copies, receivers.
COPY_CASES = [
    ("live mirrors, copies nothing", "auto", "live", [], []),
    ("stateful copies each local disk and receives the state file, with room for the RAM", "stateful", "stateful",
     COPIES, [*DISK_RECEIVERS, {"label": "state", "path": "/img/b/web1/state", "format": "raw",
                                "size": (512 + 256) << 20}]),
    ("cold copies each local disk", "cold", "cold", COPIES, DISK_RECEIVERS),
]


@pytest.mark.parametrize("method,step,copies,receivers", [case[1:] for case in COPY_CASES],
                         ids=[case[0] for case in COPY_CASES])
def test_copies_and_receivers_per_method(method, step, copies, receivers):
    plan = make_plan(copy_request(method=method))
    assert plan["family"] == step
    assert plan["local_disks"] == ["root", "data"], "the shared disk is neither mirrored nor copied"
    assert plan["copies"] == copies
    assert plan["receivers"] == receivers


def test_state_files_and_target_address_come_from_each_host():
    plan = make_plan(copy_request(method="stateful"))
    assert plan["state_files"] == {"source": "/state/a/web1/state", "target": "/img/b/web1/state"}
    assert plan["target_address"] == "198.18.0.102"
    assert make_plan(request())["state_files"] == {"source": None, "target": None}, "no locations, no paths"


def test_a_disk_missing_from_the_source_marks_has_no_size():
    plan = make_plan(request(wishes={"method": "cold"}, storage=CHECKED))
    assert plan["copies"] == [{"label": "root", "source": None, "target": "/img/b/web1-root.qcow2", "format": "qcow2",
                               "size": None, "kind": "file"}]


def test_every_method_names_its_machine_and_accel():
    plan = make_plan(request(target_facts=facts("7.2.0", QEMU_72, kvm=True), machine="pc-q35-7.2",
                             wishes={"allow_cold": True}))
    assert {method: (verdict["machine"], verdict["accel"]) for method, verdict in plan["methods"].items()} == {
        "live-shared": ("pc-q35-7.2", "tcg"), "live-mirror": ("pc-q35-7.2", "tcg"),
        "stateful": ("pc-q35-7.2", "tcg"), "cold": ("pc-q35-7.2", "kvm")}
    assert (plan["method"], plan["machine"], plan["accel"]) == ("live-mirror", "pc-q35-7.2", "tcg")
    cold = make_plan(request(target_facts=facts("7.2.0", QEMU_72, kvm=True), wishes={"method": "cold"}))
    assert (cold["family"], cold["machine"], cold["accel"]) == ("cold", "pc-q35-7.2", "kvm")


# Each row: id, what the target's facts say of the VM (None: nothing), expected kind, a fragment of the message.
SITUATION_CASES = [
    ("a VM to move", None, "start", ""),
    ("the target runs a copy of its own", {"owner": False, "status": "running", "running": True}, "refuse",
     "Cannot migrate web1 from hv1 to hv2: the target already runs that VM (running)"),
    ("the target has a stale incoming QEMU", {"owner": False, "status": "inmigrate", "running": True}, "start",
     "hv2 still has a QEMU of an earlier move (unrecorded) that never ran the VM: it is removed first."),
    ("the target has an incoming QEMU that ran",
     {"owner": False, "status": "inmigrate", "running": True, "migration": {"id": "m0", "ran": 1.0}}, "refuse",
     "the target already runs that VM (inmigrate)"),
]


@pytest.mark.parametrize("on_target,kind,message", [case[1:] for case in SITUATION_CASES],
                         ids=[case[0] for case in SITUATION_CASES])
def test_situation_in_the_plan(on_target, kind, message):
    situation = make_plan(request(on_target=on_target))["situation"]
    assert situation["kind"] == kind
    assert message in situation["message"]
    assert situation["show_plan"] is (kind == "start" and not situation["stale_target"])


def test_no_method_refuses_with_every_reason_in_one_line():
    plan = make_plan(request(target_facts=facts("7.2.0", QEMU_72)))
    reason = ("live-shared: QEMU 7.2.0 on hv2 has no machine type pc-q35-10.0; disk root is local. "
              "live-mirror: QEMU 7.2.0 on hv2 has no machine type pc-q35-10.0. "
              "stateful: QEMU 7.2.0 on hv2 has no machine type pc-q35-10.0. "
              "cold: not tried: a cold move (guest restarted) needs livemig_allow_cold=true. ")
    assert no_method_reason(plan) == reason
    assert plan["situation"] == {"kind": "refuse", "reason": reason, "show_plan": True,
                                 "message": "Cannot migrate web1 from hv1 to hv2: " + reason}


def test_a_refusal_by_state_wins_over_no_method():
    plan = make_plan(request(target_facts=facts("7.2.0", QEMU_72),
                             on_target={"owner": False, "status": "running", "running": True}))
    assert plan["situation"]["reason"] == "the target already runs that VM (running)"
    assert plan["situation"]["show_plan"] is False


# Each row: id, the VM's accel on the source, spec accel (None: left out), method, allow_cold, expected.
KVM_CHECK_CASES = [
    ("TCG guest, live only", "tcg", None, "auto", False, False),
    ("KVM guest", "kvm", None, "auto", False, True),
    ("cold allowed, spec auto", "tcg", None, "auto", True, True),
    ("cold asked for, spec kvm", "tcg", "kvm", "cold", False, True),
    ("cold allowed, spec tcg", "tcg", "tcg", "auto", True, False),
    ("stateful asked for, spec auto", "tcg", "auto", "stateful", False, False),
]


@pytest.mark.parametrize("running,spec_accel,method,allow_cold,expected", [case[1:] for case in KVM_CHECK_CASES],
                         ids=[case[0] for case in KVM_CHECK_CASES])
def test_when_the_target_must_test_kvm(running, spec_accel, method, allow_cold, expected):
    spec = {} if spec_accel is None else {"accel": spec_accel}
    assert needs_kvm_check("web1", {"vms": {"web1": {"accel": running}}}, spec, method, allow_cold) is expected


def test_no_kvm_check_for_a_vm_the_source_does_not_know():
    assert needs_kvm_check("web1", {}, {"accel": "tcg"}, "auto", True) is False
