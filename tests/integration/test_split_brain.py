"""A target that ran the guest and then died: the source is never resumed, the target keeps the newest disk, and the
VM starts again there with start.yml."""
from __future__ import annotations

import os
import re
import signal
import threading
import time

from conftest import RING_BLOCKS, guestcheck, watched

HEARTBEAT = re.compile(r"^HB \d+")


def heartbeats(lines, host: str) -> list[float]:
    return [t for t, label, text in lines if label == host and HEARTBEAT.match(text)]


def test_a_target_killed_after_it_ran_keeps_the_vm_and_the_source_is_never_resumed(lab, vm):
    name = vm("light")
    digest = lab.start(name, "hv1")
    killed: list[float] = []
    with watched(lab, name, "hv1") as tap:

        def kill_the_target_once_it_ran():
            tap.wait_for(HEARTBEAT.pattern, label="hv2", timeout=600)
            time.sleep(0.3)
            os.kill(lab.pid("hv2", name), signal.SIGKILL)
            killed.append(time.monotonic())

        killer = threading.Thread(target=kill_the_target_once_it_ran, daemon=True)
        killer.start()
        result = lab.migrate(name, "hv1", "hv2")
        killer.join(timeout=60)
        time.sleep(2)  # a source resumed by mistake would show a heartbeat by now
        lines = tap.snapshot()

    assert killed, "the target never ran the guest"
    assert result.failed, result.output
    assert "failed in the hand-over phase" in result.output, result.output
    assert f"livemig.qemu.start -e livemig_vm={name} -e livemig_host=hv2" in result.output, result.output
    first_on_target = min(heartbeats(lines, "hv2"))
    assert [t for t in heartbeats(lines, "hv1") if t > first_on_target] == [], "the source ran after the target"
    assert lab.pid("hv1", name) is None, "the source's QEMU must be stopped, never resumed"
    assert lab.record("hv2", name)["owner"] is True, "the target, which holds the newest disk, owns the VM"
    assert os.path.exists(lab.disk_path(name, "hv2")), "the target's disk must be kept"

    # Every write the guest acknowledged, on either host, is on the target's disk.
    acknowledged = guestcheck.analyze(lines)["last_ring_seq"]
    ring = guestcheck.check_ring(lab.disk_path(name, "hv2"), RING_BLOCKS, min_seq=acknowledged)
    assert ring["ok"], ring["problems"]
    assert guestcheck.hash_outside_ring(lab.disk_path(name, "hv2"), RING_BLOCKS) == digest

    refused = lab.play("start", livemig_vm=name, livemig_host="hv1")
    assert refused.failed and "belongs to or runs on hv2" in refused.output, refused.output
    tap = lab.tap(name)
    try:
        lab.start(name, "hv2", prefill=False)
        tap.wait_for(r"^PC \d+ OK", label="hv2", timeout=120)
    finally:
        tap.stop()
    assert lab.qmp("hv2", name, "query-status")["status"] == "running"
