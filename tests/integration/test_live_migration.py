"""Live migration hv1 <-> hv2 through the documented playbooks, with guest-level checks."""
from __future__ import annotations

import os
import signal
import time

from conftest import finish_and_check_disk, guestcheck, last_ring, migrate_and_check, move_and_verify, wait_until, watched


def test_light_there_and_back_and_idempotent(lab, vm):
    name = vm("light")
    digest = lab.start(name, "hv1")
    with watched(lab, name, "hv1") as tap:
        report = migrate_and_check(lab, tap, name, "hv1", "hv2")
        # Only allocated data crossed: the prefilled 8 MiB and the guest's ring, not the empty 1 GiB.
        allocated = report["disk_allocated"]["root"]
        assert 8 << 20 <= allocated < report["statistics"]["mirror_processed_bytes"] // 4, report

        again = lab.migrate(name, "hv1", "hv2")
        assert not again.failed, again.output
        assert again.changed == 0, again.output

        migrate_and_check(lab, tap, name, "hv2", "hv1")
        ring = last_ring(tap)
        assert ring > 0
    finish_and_check_disk(lab, name, "hv1", digest, ring)


def test_heavy_to_hv2(lab, vm):
    name = vm("heavy")
    move_and_verify(lab, name, lab.start(name, "hv1"), "hv1", "hv2")


def test_rerun_finishes_a_handover_the_controller_left_half_done(lab, vm):
    """The controller dies right after the switchover: the VM runs on hv2, hv1 holds a stale QEMU.
    Running the same play again finishes the hand-over instead of failing or touching the guest."""
    name = vm("light")
    lab.start(name, "hv1", prefill=False)
    with watched(lab, name, "hv1") as tap:
        controller = lab.play_in_background("migrate", livemig_vm=name, livemig_source="hv1", livemig_target="hv2")
        wait_until(lambda: (lab.record("hv1", name) or {}).get("handed_over_to") == "hv2", 300, "the switchover")
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait(10)
        assert lab.pid("hv1", name) is not None, "the stale source QEMU should still be there for this test"
        assert lab.qmp("hv1", name, "query-status")["status"] == "postmigrate"
        wait_until(lambda: lab.pid("hv2", name) and lab.qmp("hv2", name, "query-status")["status"] == "running",
                   30, "the VM to run on hv2")
        wait_until(lambda: not lab.lease_workers("hv1", name), 120, "the source-side job to end")

        result = lab.migrate(name, "hv1", "hv2")  # takes over the lease of the killed controller
        assert not result.failed, result.output
        assert "finishing the hand-over" in result.output
        assert result.changed > 0
        assert lab.record("hv2", name)["owner"] is True
        assert lab.record("hv1", name) is None and lab.pid("hv1", name) is None
        tap.wait_for(r"^PC \d+ OK", label="hv2", timeout=60, since=time.monotonic())
        assert guestcheck.analyze(tap.snapshot())["pagecheck_failures"] == []

        again = lab.migrate(name, "hv1", "hv2")
        assert not again.failed and again.changed == 0, again.output
