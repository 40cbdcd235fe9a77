"""livemig_result and the outcome line from the steps each method registered."""
from __future__ import annotations

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._outcome import OutcomeError, build_result, result_line

MIB = 1048576
STATISTICS = {"status": "completed", "source_stop_time": 100.25, "downtime_ms": 12, "ram_transferred": 120 * MIB,
              "passes": 3}


def plan(method, family):
    return {"vm": "web1", "source": "hv1", "target": "hv2", "method": method, "family": family,
            "summary": ["web1: hv1 -> hv2"]}


LIVE = {"migration": {"finished": 1, "statistics": STATISTICS, "mirrors": [{"root": 1}, {}],
                      "mirror_history": [{"t": 2.0}, {"t": 5.0}, {"t": 3.0}]},
        "resumed": {"finished": 1, "resume_time": 100.5, "disk_allocated": {"root": 16 * MIB, "data": 4 * MIB}}}
SAVED = {"changed": True, "stop_time": 50.0, "size": 80 * MIB}
RESTORED = {"changed": True, "resume_time": 52.125}
COPIES = {"results": [{"bytes_allocated": 2 * MIB, "seconds": 1.5}, {"bytes_allocated": MIB, "seconds": 0.5}]}
LOADED = {"changed": True, "load_time_ms": 800, "status": "paused"}
# The source's job reports each copy it sent, the state file last.
SENT = [{"bytes_allocated": 2 * MIB, "seconds": 1.5}, {"bytes_allocated": MIB, "seconds": 0.5},
        {"bytes_allocated": 80 * MIB, "seconds": 0.25}]
STATEFUL = {"saved": SAVED, "loaded": LOADED, "restored": RESTORED, "copies": SENT}
COLD = {"stopped_at": 10.0, "resumed_at": 13.75, "shutdown": {"stopped_by": "powerdown"}, "copies": COPIES}
COMMON = {"vm": "web1", "source": "hv1", "target": "hv2", "plan": ["web1: hv1 -> hv2"], "started": 5.0,
          "finished": 20.25, "play_started": None, "announce": None, "guest_agent": None, "prediction": None}

# Each row: method, family, steps, the expected livemig_result, the expected line.
CASES = [
    ("live-mirror", "live", LIVE,
     {"source_stop_time": 100.25, "target_resume_time": 100.5, "disk_bytes": 20 * MIB,
      "disk_allocated": {"root": 16 * MIB, "data": 4 * MIB}, "mirrors": [{"root": 1}, {}], "statistics": STATISTICS,
      "mirror_history": [{"t": 2.0}, {"t": 3.0}, {"t": 5.0}], **COMMON, "method": "live-mirror", "frozen_ms": 250.0},
     "web1 now runs on hv2 (live-mirror): guest frozen 250.0 ms (source stop to target resume), QEMU downtime 12 ms, "
     "RAM 120.0 MiB in 3 passes,\ndisks 20.0 MiB written, 15.2 s in all."),
    ("live-shared", "live", {"migration": {"statistics": {**STATISTICS, "source_stop_time": None}},
                             "resumed": {"resume_time": 100.5}},
     {"source_stop_time": None, "target_resume_time": 100.5, "disk_bytes": 0, "disk_allocated": {}, "mirrors": [],
      "statistics": {**STATISTICS, "source_stop_time": None}, "mirror_history": [], **COMMON, "method": "live-shared",
      "frozen_ms": None},
     "web1 now runs on hv2 (live-shared): guest frozen None ms (source stop to target resume), QEMU downtime 12 ms, "
     "RAM 120.0 MiB in 3 passes,\ndisks 0.0 MiB written, 15.2 s in all."),
    ("stateful", "stateful", STATEFUL,
     {"source_stop_time": 50.0, "target_resume_time": 52.125, "state_bytes": 80 * MIB, "disk_bytes": 3 * MIB,
      "statistics": {"save": SAVED, "restore": {**LOADED, **RESTORED}, "copies": [1.5, 0.5], "state_copy_s": 0.25},
      **COMMON, "method": "stateful",
      "frozen_ms": 2125.0},
     "web1 now runs on hv2 (stateful): guest frozen 2125.0 ms (source stop to target resume), state file 80.0 MiB,"
     "\ndisks 3.0 MiB written, 15.2 s in all."),
    ("cold", "cold", COLD,
     {"source_stop_time": 10.0, "target_resume_time": 13.75, "disk_bytes": 3 * MIB,
      "statistics": {"stopped_by": "powerdown", "copies": [1.5, 0.5]}, **COMMON, "method": "cold", "frozen_ms": 3750.0},
     "web1 now runs on hv2 (cold): guest offline 3750.0 ms and restarted,\ndisks 3.0 MiB written, 15.2 s in all."),
]


@pytest.mark.parametrize("method,family,steps,expected,line", CASES, ids=[case[0] for case in CASES])
def test_result_and_line(method, family, steps, expected, line):
    result = build_result(steps, plan(method, family), "5.0", 20.25)
    assert result == expected
    assert list(result)[:2] == ["source_stop_time", "target_resume_time"], "the figures first, as before"
    assert result_line(result) == line


def test_the_result_keeps_the_plays_start_for_the_chart():
    assert build_result(LIVE, plan("live-mirror", "live"), "5.0", 20.25, play_started="1.5")["play_started"] == 1.5


def test_a_cold_move_without_local_disks_copies_nothing():
    result = build_result({**COLD, "copies": {"results": [], "skipped": True}}, plan("cold", "cold"), 5.0, 20.25)
    assert result["disk_bytes"] == 0 and result["statistics"]["copies"] == []


@pytest.mark.parametrize("steps,family,message", [
    ({"saved": SAVED}, "stateful", "the stateful move's steps lack loaded, restored, copies"),
    (LIVE, None, "no figures for method"),
])
def test_steps_that_do_not_fit_are_named(steps, family, message):
    with pytest.raises(OutcomeError) as error:
        build_result(steps, plan("x", family), 0, 0)
    assert message in str(error.value)


ANNOUNCE = {"enabled": True, "nics": [{"name": "lan", "mac": "52:54:00:00:00:01", "bridge": "br0", "id": "net-lan"}],
            "parameters": {"announce-initial": 50, "announce-max": 550, "announce-rounds": 5, "announce-step": 100},
            "self": {"initial": 50, "max": 550, "rounds": 5, "step": 100, "interfaces": ["net-lan"]}}


def test_the_result_tells_the_announcement_and_the_agents_answer():
    steps = {**LIVE, "announced": {"changed": True}, "guest_ping": {"answered": True, "answer_ms": 41, "msg": "ok"}}
    result = build_result(steps, {**plan("live-mirror", "live"), "announce": ANNOUNCE}, "5.0", 20.25)
    assert result["announce"] == {"enabled": True, "macs": ["52:54:00:00:00:01"], "rounds_on_resume": 5,
                                  "announce_self": True}
    assert result["guest_agent"] == {"answered": True, "answer_ms": 41, "msg": "ok"}
    assert "MACs announced (5 rounds on resume + announce-self), guest agent answered after 41 ms" in \
        result_line(result)


def test_announcement_switched_off_and_a_silent_agent_are_told_too():
    off = {**ANNOUNCE, "enabled": False, "parameters": {**ANNOUNCE["parameters"], "announce-rounds": 0}, "self": None}
    steps = {**LIVE, "announced": {"skipped": True}, "guest_ping": {"answered": False, "msg": "no answer"}}
    result = build_result(steps, {**plan("live-mirror", "live"), "announce": off}, "5.0", 20.25)
    assert result["announce"] == {"enabled": False, "macs": ["52:54:00:00:00:01"], "rounds_on_resume": 0,
                                  "announce_self": False}
    assert "MACs not announced, guest agent did not answer" in result_line(result)
    cold = build_result(COLD, {**plan("cold", "cold"), "announce": ANNOUNCE}, 5.0, 20.25)
    assert cold["announce"]["enabled"] is False and cold["announce"]["rounds_on_resume"] == 0


PREDICTION = {"predicted": True, "strategy": "precopy", "convergence": "auto",
              "figures": {"precopy": {"total_s": 4.0, "freeze_ms": 150}, "postcopy": {"total_s": 6.0, "freeze_ms": 110},
                          "stateful": {"total_s": 3.0, "freeze_ms": 3000}}}


def test_the_report_puts_the_prediction_beside_what_happened():
    """Live: from the first mirror sample to completion against the strategy used; stateful: the freeze."""
    epoch = 1.7e9
    statistics = {**STATISTICS, "completed_time": epoch + 5.0, "wall_time_s": 3.0}
    steps = {**LIVE, "migration": {"statistics": statistics,
                                   "mirror_history": [{"t": epoch + 1.0}, {"t": epoch + 2.0}]}}
    live = build_result(steps, {**plan("live-mirror", "live"), "prediction": PREDICTION}, "5.0", 20.25)
    assert live["prediction"] == {"strategy": "precopy", "predicted_total_s": 4.0, "actual_total_s": 4.0,
                                  "error_percent": 0.0, "predicted_freeze_ms": 150, "actual_downtime_ms": 12,
                                  "downtime_error_percent": 1150.0, "measured_from": epoch + 1.0}
    postcopy = build_result(steps, {**plan("live-mirror", "live"),
                                    "prediction": {**PREDICTION, "convergence": "postcopy-early"}}, "5.0", 20.25)
    assert postcopy["prediction"]["strategy"] == "postcopy" and postcopy["prediction"]["error_percent"] == 50.0
    no_mirror = build_result({**steps, "migration": {"statistics": statistics}},
                             {**plan("live-shared", "live"), "prediction": PREDICTION}, "5.0", 20.25)
    assert no_mirror["prediction"]["actual_total_s"] == 3.0, "without a mirror, QEMU's own migration time"
    assert no_mirror["prediction"]["measured_from"] == epoch + 2.0
    stateful = build_result(STATEFUL, {**plan("stateful", "stateful"), "prediction": PREDICTION}, "5.0", 20.25)
    assert stateful["prediction"]["strategy"] == "stateful"
    assert stateful["prediction"]["actual_total_s"] == 2.125 and stateful["prediction"]["error_percent"] == 41.2
    assert stateful["prediction"]["measured_from"] == 50.0, "the freeze counts from the source's stop"
    unpredicted = build_result(steps, {**plan("live-mirror", "live"),
                                       "prediction": {"predicted": False}}, "5.0", 20.25)
    assert unpredicted["prediction"] is None
