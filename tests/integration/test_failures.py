"""Failures before the switchover roll back: the VM keeps running on the source, the target is cleaned up."""
from __future__ import annotations

import os
import signal
import threading
import time

from conftest import SMALL_DISK_MB, guestcheck, lab_path, link, precopy_running, wait_until, watched

from ansible_collections.livemig.qemu.plugins.module_utils._paths import tap_name

STATE_FILES = ("/state", "/state.partial")  # a VM's state file in <state_dir>/<vm>/, and one half written

NIC = [{"name": "lan", "bridge": "lmguest"}]


def assert_rolled_back(lab, tap, name: str, result, phase: str, since: float) -> None:
    assert result.failed, result.output
    assert f"failed in the {phase} phase" in result.output, result.output
    assert lab.qmp("hv1", name, "query-status")["status"] == "running", "the VM must run, not paused, on hv1"
    assert lab.record("hv1", name)["owner"] is True
    assert lab.qmp("hv1", name, "query-block-jobs") == []
    nodes = [node.get("node-name", "") for node in lab.qmp("hv1", name, "query-named-block-nodes")]
    assert not [node for node in nodes if node.startswith("livemig-nbd-")], nodes
    assert lab.qmp("hv1", name, "query-migrate").get("status") in (None, "cancelled", "failed")
    assert lab.pid("hv2", name) is None, "the target QEMU (and its NBD server) must be gone"
    assert not os.path.exists(lab_path("hv2", "images", f"{name}-root.qcow2")), "partial disk left on hv2"
    assert lab.record("hv2", name) is None
    if lab.vms[name].get("nics"):
        assert lab.taps("hv1") == {tap_name(name, "lan")}, "the source keeps its own tap"
        assert lab.taps("hv2") == set(), "the target's tap went with its QEMU"
    # The guest never noticed: heartbeats kept coming on hv1, memory intact.
    after = time.monotonic()
    tap.wait_for(r"^PC \d+ OK", label="hv1", timeout=60, since=after)
    lines = tap.snapshot()
    summary = guestcheck.analyze(lines)
    assert summary["pagecheck_failures"] == []
    gaps = [gap for start, end, gap in guestcheck.hb_gaps(lines, "hv1") if end >= since]
    assert max(gaps) < 1.0, f"heartbeat stopped for {max(gaps):.3f}s"


def run_in_background(function) -> threading.Thread:
    thread = threading.Thread(target=function, daemon=True)
    thread.start()
    return thread


def test_target_killed_during_disk_mirror(lab, vm):
    name = vm("light", nics=NIC)
    image = lab_path("hv1", "images", f"{name}-root.qcow2")
    lab.start(name, "hv1", prefill=False)
    with watched(lab, name, "hv1") as tap:
        since = time.monotonic()

        def kill_target_once_mirroring():
            wait_until(lambda: lab.qmp("hv1", name, "query-block-jobs"), 120, "the disk mirror to start")
            os.kill(lab.pid("hv2", name), signal.SIGKILL)

        assert os.path.exists(image)
        killer = run_in_background(kill_target_once_mirroring)
        # 4 MiB/s keeps the 1 GiB mirror busy long enough to be interrupted (a move the prediction would refuse).
        result = lab.migrate(name, "hv1", "hv2", livemig_max_bandwidth=4 * 1024 * 1024, livemig_predict=False)
        killer.join(5)
        assert_rolled_back(lab, tap, name, result, "disk mirror", since)
        assert "disk mirror livemig-mirror-disk-root stopped" in result.output, result.output


def test_link_cut_during_ram_precopy(lab, vm):
    name = vm("light", nics=NIC, disk_mb=SMALL_DISK_MB)
    lab.start(name, "hv1", prefill=False)
    restored = threading.Event()
    try:
        with watched(lab, name, "hv1") as tap:
            since = time.monotonic()

            def cut_link_during_precopy():
                wait_until(lambda: precopy_running(lab, name), 180, "RAM pre-copy to start", interval=0.2)
                link("hv2", "down")
                time.sleep(12)  # a flap: long enough to be taken for a dead link, then it comes back
                link("hv2", "up")
                restored.set()

            cutter = run_in_background(cut_link_during_precopy)
            # 8 MiB/s against 16 MiB/s of dirtying: pre-copy runs until the link goes away (not predicted: the
            # prediction would refuse this move).
            result = lab.migrate(name, "hv1", "hv2", livemig_max_bandwidth=8 * 1024 * 1024, livemig_stall_timeout=4,
                                 livemig_predict=False)
            cutter.join(30)
            assert restored.is_set()
            assert_rolled_back(lab, tap, name, result, "RAM pre-copy and switchover", since)
            assert "no data moved" in result.output, result.output
    finally:
        link("hv2", "up")


def test_stateful_copy_fails_after_the_save(lab, vm):
    """The VM is stopped and its state saved when the disk copy breaks: the source resumes it, nothing is lost."""
    name = vm("light")
    lab.start(name, "hv1", prefill=False)
    with watched(lab, name, "hv1") as tap:

        def kill_disk_receiver_once_saved():
            wait_until(lambda: lab.qmp("hv1", name, "query-status")["status"] == "postmigrate", 120, "the state save")
            os.kill(lab.record("hv2", name)["volatile"]["copy:root"]["pid"], signal.SIGKILL)

        killer = run_in_background(kill_disk_receiver_once_saved)
        result = lab.migrate(name, "hv1", "hv2", livemig_method="stateful")
        killer.join(5)
        assert result.failed, result.output
        assert "Stateful migration of" in result.output and "failed in the copy phase" in result.output, result.output
        assert lab.qmp("hv1", name, "query-status")["status"] == "running", "the source must run again"
        assert lab.record("hv1", name)["owner"] is True
        assert lab.pid("hv2", name) is None and lab.record("hv2", name) is None
        leftovers = [path for path in lab.files(name) if "/hv2/" in path or path.endswith(STATE_FILES)]
        assert leftovers == [], leftovers
        after = time.monotonic()
        tap.wait_for(r"^PC \d+ OK", label="hv1", timeout=60, since=after)
        summary = guestcheck.analyze(tap.snapshot())
        assert summary["pagecheck_failures"] == [] and summary["hb_seq_errors"] == 0


def test_stateful_controller_killed_after_the_save_the_source_resumes_by_itself(lab, vm):
    """The controller dies while the guest is paused between the save and the restore: the source-side job resumes
    the VM on hv1 by itself once the commit has not come in time, and the next run moves the VM."""
    name = vm("light")
    lab.start(name, "hv1", prefill=False)
    with watched(lab, name, "hv1") as tap:
        controller = lab.play_in_background("migrate", livemig_vm=name, livemig_source="hv1", livemig_target="hv2",
                                            livemig_method="stateful", livemig_commit_timeout=15)
        wait_until(lambda: lab.qmp("hv1", name, "query-status")["status"] == "postmigrate", 180, "the state save",
                   interval=0.1)
        paused = time.monotonic()
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait(10)
        wait_until(lambda: lab.qmp("hv1", name, "query-status")["status"] == "running", 180,
                   "the source-side job to resume the VM")
        print(f"the VM ran again on hv1 {time.monotonic() - paused:.1f}s after the controller was killed")
        assert lab.record("hv1", name)["owner"] is True
        assert lab.record("hv1", name)["migration"]["phase"] == "rolled-back", lab.record("hv1", name)
        assert lab.pid("hv2", name) is None or lab.qmp("hv2", name, "query-status")["status"] != "running"
        tap.wait_for(r"^PC \d+ OK", label="hv1", timeout=60, since=time.monotonic())

        wait_until(lambda: not lab.lease_workers("hv1", name), 120, "the source-side job to end")
        moved = lab.migrate(name, "hv1", "hv2", livemig_method="stateful")
        assert not moved.failed, moved.output
        assert lab.pid("hv1", name) is None and lab.record("hv2", name)["owner"] is True
        assert lab.qmp("hv2", name, "query-status")["status"] == "running"
        tap.wait_for(r"^PC \d+ OK", label="hv2", timeout=60, since=time.monotonic())
        summary = guestcheck.analyze(tap.snapshot())
        assert summary["pagecheck_failures"] == [] and summary["hb_seq_errors"] == 0
