"""Pre-copy under load: the convergence policy, post-copy, and a controller that goes away mid-migration."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from conftest import (REPO_ROOT, SMALL_DISK_MB, finish_and_check_disk, guestcheck, last_ring, link, migrate_and_check,
                      move_and_verify, precopy_running, wait_until, watched)

# The heavy guest dirties 128 MiB/s; 32 MiB/s of bandwidth can never catch up by pre-copy alone.
TOO_SLOW = {"livemig_max_bandwidth": 32 << 20, "livemig_capabilities_deny": ["auto-converge"]}


def test_heavy_workload_on_a_1gbit_link_goes_by_post_copy_from_the_start_when_allowed(lab, vm):
    """The prediction sees that pre-copy cannot converge (128 MiB/s dirtied, ~112 MiB/s carried) and picks post-copy
    after the first pass, instead of throttling the guest for many passes first."""
    name = vm("heavy")
    digest = lab.start(name, "hv1")
    link("hv2", "limit", "1gbit")
    try:
        report = move_and_verify(lab, name, digest, "hv1", "hv2", livemig_allow_postcopy=True)
    finally:
        link("hv2", "unlimit")
    stats = report["statistics"]
    assert any("auto picks post-copy" in line for line in report["plan"]), report["plan"]
    assert stats["policy"] == "postcopy-early" and stats["postcopy_started"], stats["policy_actions"]
    assert report["prediction"]["strategy"] == "postcopy"
    assert report["prediction"]["actual_total_s"] > 0 and report["prediction"]["predicted_total_s"] > 0
    assert not any("cpu-throttle" in json.dumps(action) for action in stats["policy_actions"]), \
        "post-copy came before any throttling"


def test_a_post_copy_whose_migration_link_is_cut_for_5s_is_recovered_and_completes(lab, vm):
    """The migration link goes down for 5 s during post-copy (management stays up): the source pauses the silent
    post-copy, the target listens again once the broken stream reaches it, the source resumes it, and the guest,
    which ran on the target all along, passes its checks there."""
    name = vm("heavy", disk_mb=SMALL_DISK_MB)
    digest = lab.start(name, "hv1")
    cut = {}

    def cut_in_post_copy():
        try:
            wait_until(lambda: lab.qmp("hv1", name, "query-migrate").get("status") == "postcopy-active", 300,
                       "post-copy to start", interval=0.05)
            time.sleep(1.0)
            link("hv2", "down")
            cut["at"] = time.monotonic()
            time.sleep(5.0)
        except Exception as exc:  # pylint: disable=broad-except
            cut["problem"] = exc
        finally:
            link("hv2", "up")

    link("hv2", "limit", "200mbit")
    cutter = threading.Thread(target=cut_in_post_copy)
    cutter.start()
    try:
        report = move_and_verify(lab, name, digest, "hv1", "hv2", livemig_allow_postcopy=True)
    finally:
        cutter.join(360)
        link("hv2", "up")
        link("hv2", "unlimit")
    assert "at" in cut and "problem" not in cut, cut
    stats = report["statistics"]
    assert stats["postcopy_started"] and stats["status"] == "completed", stats["policy_actions"]
    assert len(stats["recoveries"]) >= 1, stats["policy_actions"]
    first = stats["recoveries"][0]
    assert first["resumed_at"] - first["paused_at"] >= 1.0 and first["attempts"] >= 1, first
    assert "stop-source" not in json.dumps(stats["policy_actions"]), "the source never ran again"


def test_the_runtime_policy_switches_to_post_copy_when_pre_copy_stalls(lab, vm):
    """Without a prediction (livemig_predict: false) the runtime policy finds the stall itself and switches."""
    name = vm("heavy", disk_mb=SMALL_DISK_MB)
    report = move_and_verify(lab, name, lab.start(name, "hv1"), "hv1", "hv2", livemig_allow_postcopy=True,
                             livemig_predict=False, **TOO_SLOW)
    stats = report["statistics"]
    assert stats["policy"] == "auto" and stats["postcopy_started"], stats["policy_actions"]
    assert any("postcopy" in json.dumps(action).lower() for action in stats["policy_actions"])
    assert report["prediction"] is None


def test_a_move_predicted_not_to_converge_is_refused_before_anything_starts(lab, vm):
    name = vm("heavy", disk_mb=SMALL_DISK_MB)
    lab.start(name, "hv1", prefill=False)
    result = lab.migrate(name, "hv1", "hv2", **TOO_SLOW)
    assert result.failed, result.output
    assert "no live strategy fits: pre-copy does not converge within the 300 ms downtime target" in result.output
    for option in ("livemig_allow_postcopy: true", "livemig_method: stateful", "livemig_predict: false"):
        assert option in result.output, result.output
    assert re.search(r"prediction at 32\.0 MiB/s: bound [\d.]+ s", result.output), result.output
    assert "Start the VM on the target" not in result.output, "nothing started"
    assert lab.qmp("hv1", name, "query-status")["status"] == "running"
    assert lab.pid("hv2", name) is None and lab.record("hv1", name)["owner"] is True


def test_without_post_copy_the_runtime_policy_aborts_with_the_rates_and_the_guest_runs_on(lab, vm):
    name = vm("heavy", disk_mb=SMALL_DISK_MB)
    lab.start(name, "hv1", prefill=False)
    with watched(lab, name, "hv1") as tap:
        result = lab.migrate(name, "hv1", "hv2", livemig_predict=False, **TOO_SLOW)
        assert result.failed, result.output
        found = re.search(r"pre-copy cannot converge: the guest dirties ([\d.]+) MiB/s, the link carries ([\d.]+) MiB/s",
                          result.output)
        assert found, result.output
        assert float(found[1]) > float(found[2]) * 0.9
        assert "RAM pre-copy" in result.output and "It keeps running on hv1" in result.output
        assert lab.qmp("hv1", name, "query-status")["status"] == "running"
        assert lab.pid("hv2", name) is None and lab.record("hv1", name)["owner"] is True
        tap.wait_for(r"^PC \d+ OK", label="hv1", timeout=60, since=time.monotonic())
        assert guestcheck.analyze(tap.snapshot())["pagecheck_failures"] == []


def test_a_guest_that_fills_its_pages_with_random_data_passes_its_page_check_across_a_move(lab, vm):
    """Random page contents: nothing for zero-page detection or compression to shrink, every byte verified."""
    name = vm("light", fill="random", disk_mb=SMALL_DISK_MB)
    digest = lab.start(name, "hv1")
    with watched(lab, name, "hv1") as tap:
        assert tap.wait_for(r"^LMREADY .*fill=random", label="hv1", timeout=5)
        report = migrate_and_check(lab, tap, name, "hv1", "hv2", livemig_multifd_channels=2,
                                   livemig_multifd_compression="zstd")
        ring = last_ring(tap)
    finish_and_check_disk(lab, name, "hv2", digest, ring)
    assert any("capabilities: source" in line and "multifd" in line for line in report["plan"]), report["plan"]
    assert report["statistics"]["ram_transferred"] > 64 << 20, "the random working set does not compress away"


def test_controller_killed_during_pre_copy(lab, vm):
    """qemu_migrate runs under async on the source host: without its controller it still finishes the move."""
    name = vm("light", disk_mb=SMALL_DISK_MB)
    lab.start(name, "hv1", prefill=False)
    with watched(lab, name, "hv1") as tap:
        controller = lab.play_in_background("migrate", livemig_vm=name, livemig_source="hv1", livemig_target="hv2",
                                            livemig_max_bandwidth=24 << 20)
        wait_until(lambda: precopy_running(lab, name), 180, "RAM pre-copy to start", interval=0.1)
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait(10)

        def settled():
            states = {host: lab.qmp(host, name, "query-status")["status"] if lab.pid(host, name) else None
                      for host in ("hv1", "hv2")}
            return states if "running" in states.values() and "inmigrate" not in states.values() \
                and lab.qmp("hv1", name, "query-migrate").get("status") in ("completed", "failed", "cancelled") \
                else None
        states = wait_until(settled, 180, "the migration to end without its controller")
        assert list(states.values()).count("running") == 1, states
        assert states == {"hv1": "postmigrate", "hv2": "running"}, states
        tap.wait_for(r"^PC \d+ OK", label="hv2", timeout=60, since=time.monotonic())

        wait_until(lambda: not lab.lease_workers("hv1", name), 120, "the source-side job to end")
        result = lab.migrate(name, "hv1", "hv2")  # the next run takes over the lease, finishes the hand-over
        assert not result.failed and "finishing the hand-over" in result.output, result.output
        assert lab.pid("hv1", name) is None and lab.record("hv2", name)["owner"] is True
        summary = guestcheck.analyze(tap.snapshot())
        assert summary["pagecheck_failures"] == [] and summary["hb_seq_errors"] == 0


def test_benchmark_smoke_run(tmp_path):
    """One case of the benchmark matrix, once for us and once for libvirt: the harness runs, its checks pass and the
    ratio table compares the two."""
    output = tmp_path / "bench.json"
    process = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", "run.py"), "--smoke",
                              "--json", str(output)], capture_output=True, text=True, timeout=900, check=False)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    results = json.loads(output.read_text())
    assert [(case["policy"], case["workload"], case["link"]) for case in results["cases"]] == [
        ("auto", "light", "unlimited"), ("libvirt-tls", "light", "unlimited")]
    for case in results["cases"]:
        assert case["completed"] == "1/1" and case["medians"]["checks_pass"] is True, case
        assert case["medians"]["guest_visible_downtime_ms"] > 0
    assert "| auto | light | words | unlimited |" in results["table"], results["table"]
    assert "| libvirt-tls | light | words | unlimited |" in results["table"], results["table"]
    assert "| auto | libvirt-tls | light | words | unlimited |" in results["ratio_table"], results["ratio_table"]
