"""The plan's prediction: measurements in, the runtime policy and the refusal out (through make_plan)."""
from __future__ import annotations

import pytest
from test_negotiate import request

from ansible_collections.livemig.qemu.plugins.module_utils._forecast import forecast
from ansible_collections.livemig.qemu.plugins.module_utils._negotiate import make_plan

MIB = 1 << 20
GBIT = 1e9 / 8
# Figures like qemu_migration_probe's on this lab's heavy guest (512 MiB, 256 MiB dirtied at 128 MiB/s).
HEAVY = {"ram_bytes": 512 * MIB, "ram_resident_bytes": 320 * MIB, "disk_bytes": 256 * MIB, "dirty_rate": 128 * MIB,
         "dirty_rate_mode": "page-sampling", "disk_write_rate": 400 * 1024, "link_rate": 0.94 * GBIT}
LIGHT = {**HEAVY, "ram_bytes": 256 * MIB, "ram_resident_bytes": 110 * MIB, "dirty_rate": 16 * MIB,
         "disk_write_rate": 80 * 1024}
AUTO = {"convergence": "auto", "method": "auto"}


def planned(measurements, **wishes):
    req = request(wishes={**AUTO, **wishes}, disks=[{"name": "root", "size_mb": 1024}])
    return make_plan({**req, "measurements": measurements})


def test_a_light_guest_goes_by_pre_copy_and_the_plan_prints_the_prediction():
    plan = planned(LIGHT)
    assert plan["prediction"]["strategy"] == "precopy" and plan["convergence"] == "auto"
    assert plan["situation"]["kind"] == "start"
    text = "\n".join(plan["summary"])
    assert "  prediction at " in text and "pre-copy: converges in" in text and "auto picks pre-copy" in text


def test_a_heavy_guest_on_a_slow_link_goes_by_post_copy_from_the_first_pass_when_allowed():
    plan = planned(HEAVY, allow_postcopy=True)
    assert plan["prediction"]["strategy"] == "postcopy"
    assert plan["convergence"] == "postcopy-early", "qemu_migrate gets the policy the prediction picked"
    assert "postcopy-ram" in plan["capabilities"]["source"]
    assert plan["situation"]["kind"] == "start"


def test_without_post_copy_a_heavy_guest_is_refused_before_anything_starts_with_the_options():
    plan = planned(HEAVY)
    assert plan["situation"]["kind"] == "refuse" and plan["situation"]["show_plan"]
    message = plan["situation"]["message"]
    for option in ("livemig_allow_postcopy: true", "livemig_method: stateful", "livemig_predict: false"):
        assert option in message, message
    assert "128.0 MiB/s" in message, "the refusal gives the measured dirty rate"


def test_post_copy_refused_by_a_host_policy_counts_as_not_allowed():
    req = request(wishes={**AUTO, "allow_postcopy": True}, target_policy={"deny_capabilities": ["postcopy-ram"]})
    plan = make_plan({**req, "measurements": HEAVY})
    assert plan["situation"]["kind"] == "refuse" and plan["convergence"] == "auto"


@pytest.mark.parametrize("wishes", [{"convergence": "defaults"}, {"convergence": "postcopy-early"},
                                    {"predict": False}, {"method": "stateful"}])
def test_the_prediction_only_decides_under_auto_for_a_live_move(wishes):
    plan = planned(HEAVY, **wishes)
    assert plan["situation"]["kind"] == "start"
    assert plan["convergence"] == {**AUTO, **wishes}["convergence"]


def test_no_measurement_no_prediction_and_the_plan_says_why():
    plan = planned(None)
    assert plan["prediction"]["predicted"] is False and plan["convergence"] == "auto"
    assert "  prediction: none (the source was not measured)" in plan["summary"]
    unlinked = planned({**LIGHT, "link_rate": None, "link_error": "no listener answered at 198.18.0.102:4000"})
    assert unlinked["situation"]["kind"] == "start"
    assert any("no listener answered" in line for line in unlinked["summary"]), unlinked["summary"]
    undirty = forecast({**LIGHT, "dirty_rate": None, "dirty_rate_error": "QEMU said no"}, "live-mirror",
                       {"convergence": "auto", "max_bandwidth": 0, "max_downtime_ms": 300}, [])
    assert undirty["lines"] == ["prediction: none (the dirty rate could not be measured: QEMU said no)"]


def test_malformed_measurements_give_no_prediction_rather_than_a_failure():
    result = forecast({"ram_bytes": "lots"}, "live-mirror",
                      {"convergence": "auto", "max_bandwidth": 0, "max_downtime_ms": 300}, [])
    assert result["predicted"] is False and "ram_bytes" in result["reason"] or "malformed" in result["reason"]


def test_a_bandwidth_cap_slows_the_prediction():
    free = planned(LIGHT)["prediction"]["figures"]["precopy"]["total_s"]
    capped = planned(LIGHT, max_bandwidth=32 * MIB)["prediction"]["figures"]["precopy"]["total_s"]
    assert capped > 2 * free


def test_the_probes_stream_ceiling_sets_the_plans_rate_and_is_kept_with_its_source():
    source = {"migration_id": "web1-1", "when": 1750000000.0, "bound": "host", "link_rate": 1.2e9, "cap": 0}
    slow = {**LIGHT, "link_rate": 1.2e9, "stream_rate": 210e6, "stream_rate_source": source}
    prediction = planned(slow)["prediction"]
    assert prediction["figures"]["rate"] == 210e6 and prediction["figures"]["limited_by"] == "stream"
    assert prediction["measured"]["stream_rate"] == 210e6 and prediction["measured"]["stream_rate_source"] == source
    assert "(QEMU's stream, as last measured from this host to this target)" in prediction["lines"][0]
    unbound = planned({**slow, "stream_rate": None, "stream_rate_source": {**source, "bound": "link"}})["prediction"]
    assert unbound["figures"]["rate"] == 1.2e9 and unbound["figures"]["limited_by"] == "link"
