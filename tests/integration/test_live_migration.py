"""Live migration hv1 <-> hv2 through the documented playbooks, with guest-level checks."""
from __future__ import annotations

import os
import signal
import time

from conftest import RING_BLOCKS, guestcheck, lab_path, wait_until


def settle(tap, host: str) -> None:
    """Wait until the guest on `host` runs its workload and has verified memory once."""
    tap.wait_for(r"^LMREADY", label=host, timeout=60)
    tap.wait_for(r"^PC \d+ OK", label=host, timeout=60)


def migrate_and_check(lab, tap, name: str, source: str, target: str) -> dict:
    before = time.monotonic()
    result = lab.migrate(name, source, target)
    assert not result.failed, result.output
    after = time.monotonic()
    # The guest keeps running on the target and verifies its memory there.
    tap.wait_for(r"^HB \d+", label=target, timeout=30, since=after)
    tap.wait_for(r"^PC \d+ OK", label=target, timeout=60, since=after)
    summary = guestcheck.analyze(tap.snapshot())
    assert summary["pagecheck_failures"] == []
    assert summary["hb_seq_errors"] == 0
    assert lab.pid(source, name) is None, "the source QEMU must be gone"
    assert lab.qmp(target, name, "query-status")["status"] == "running"
    assert lab.record(target, name)["owner"] is True
    assert lab.record(source, name) is None, "the source keeps no record of a VM it no longer owns"
    report = lab.report(name)
    assert report["statistics"]["status"] == "completed"
    assert report["target"] == target
    report["guest_visible_downtime_s"] = summary["max_gap_s"]
    report["window"] = (before, after)
    return report


def finish_and_check_disk(lab, name: str, host: str, digest: str, last_ring: int) -> None:
    lab.stop(name)
    image = lab_path(host, "images", f"{name}-root.qcow2")
    ring = guestcheck.check_ring(image, RING_BLOCKS, min_seq=last_ring)
    assert ring["ok"], ring["problems"]
    assert guestcheck.hash_outside_ring(image, RING_BLOCKS) == digest, "the disk outside the ring changed"


def test_light_there_and_back_and_idempotent(lab, vm):
    name = vm("light")
    digest = lab.start(name, "hv1")
    tap = lab.tap(name)
    try:
        settle(tap, "hv1")
        report = migrate_and_check(lab, tap, name, "hv1", "hv2")
        # Only allocated data crossed: the prefilled 8 MiB and the guest's ring, not the empty 1 GiB.
        allocated = report["disk_allocated"]["root"]
        assert 8 << 20 <= allocated < report["statistics"]["mirror_processed_bytes"] // 4, report

        again = lab.migrate(name, "hv1", "hv2")
        assert not again.failed, again.output
        assert again.changed == 0, again.output

        migrate_and_check(lab, tap, name, "hv2", "hv1")
        last_ring = guestcheck.analyze(tap.snapshot())["last_ring_seq"]
        assert last_ring > 0
    finally:
        tap.stop()
    finish_and_check_disk(lab, name, "hv1", digest, last_ring)


def test_heavy_to_hv2(lab, vm):
    name = vm("heavy")
    digest = lab.start(name, "hv1")
    tap = lab.tap(name)
    try:
        settle(tap, "hv1")
        migrate_and_check(lab, tap, name, "hv1", "hv2")
        last_ring = guestcheck.analyze(tap.snapshot())["last_ring_seq"]
    finally:
        tap.stop()
    finish_and_check_disk(lab, name, "hv2", digest, last_ring)


def test_rerun_finishes_a_handover_the_controller_left_half_done(lab, vm):
    """The controller dies right after the switchover: the VM runs on hv2, hv1 holds a stale QEMU.
    Running the same play again finishes the hand-over instead of failing or touching the guest."""
    name = vm("light")
    lab.start(name, "hv1", prefill=False)
    tap = lab.tap(name)
    try:
        settle(tap, "hv1")
        controller = lab.play_in_background("migrate", livemig_vm=name, livemig_source="hv1", livemig_target="hv2")
        wait_until(lambda: (lab.record("hv1", name) or {}).get("handed_over_to") == "hv2", 300, "the switchover")
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait(10)
        assert lab.pid("hv1", name) is not None, "the stale source QEMU should still be there for this test"
        assert lab.qmp("hv1", name, "query-status")["status"] == "postmigrate"
        wait_until(lambda: lab.pid("hv2", name) and lab.qmp("hv2", name, "query-status")["status"] == "running",
                   30, "the VM to run on hv2")

        result = lab.migrate(name, "hv1", "hv2")
        assert not result.failed, result.output
        assert "finishing the hand-over" in result.output
        assert result.changed > 0
        assert lab.record("hv2", name)["owner"] is True
        assert lab.record("hv1", name) is None and lab.pid("hv1", name) is None
        tap.wait_for(r"^PC \d+ OK", label="hv2", timeout=60, since=time.monotonic())
        assert guestcheck.analyze(tap.snapshot())["pagecheck_failures"] == []

        again = lab.migrate(name, "hv1", "hv2")
        assert not again.failed and again.changed == 0, again.output
    finally:
        tap.stop()
