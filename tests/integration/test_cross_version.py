"""Moves between QEMU 10.0 (hv1) and QEMU 7.2 (hv2, the older peer unpacked by scripts/setup.sh).

QEMU 7.2 as a TCG migration source corrupts guest memory on long pre-copy (a QEMU bug seen on this machine), so
the move from 7.2 uses the idle workload; the moves from 10.0 use the light one.
"""
from __future__ import annotations

import os
import time

import pytest

from conftest import finish_and_check_disk, last_ring, move_and_verify, watched

QEMU_72 = "/opt/livemig/qemu-7.2/bin/qemu-system-x86_64"


@pytest.fixture
def older_hv2(host_vars):
    if not os.access(QEMU_72, os.X_OK):
        pytest.fail(f"the older peer {QEMU_72} is missing: run scripts/setup.sh")
    host_vars("hv2", livemig_qemu_binary=QEMU_72)


def test_live_from_10_0_to_7_2(lab, vm, older_hv2):
    name = vm("light", machine="pc-q35-7.2")
    report = move_and_verify(lab, name, lab.start(name, "hv1"), "hv1", "hv2")
    assert "-> hv2 (7.2." in report["plan"][0] and lab.record("hv2", name)["machine"] == "pc-q35-7.2"


def test_live_from_7_2_to_10_0(lab, vm, older_hv2):
    name = vm("idle", machine="pc-q35-7.2")
    report = move_and_verify(lab, name, lab.start(name, "hv2"), "hv2", "hv1")
    assert report["plan"][0].startswith(f"{name}: hv2 (7.2.")


def test_10_0_only_machine_type_refused_then_moved_cold(lab, vm, older_hv2):
    name = vm("light")  # machine q35: pc-q35-10.0 on hv1, which QEMU 7.2 does not know
    digest = lab.start(name, "hv1")

    def files_but_the_running_disk() -> dict:
        return {path: mtime for path, mtime in lab.files(name).items() if path != lab.disk_path(name, "hv1")}

    with watched(lab, name, "hv1") as tap:
        before = files_but_the_running_disk()
        for playbook in ("preflight", "migrate"):
            result = lab.play(playbook, livemig_vm=name, livemig_source="hv1", livemig_target="hv2")
            assert result.failed and result.changed == 0, result.output
            assert "live-mirror: QEMU 7.2." in result.output, result.output
            assert "on hv2 has no machine type pc-q35-10.0" in result.output
            assert "stateful: QEMU 7.2." in result.output
            assert "cold: not tried: a cold move (guest restarted) needs livemig_allow_cold=true" in result.output
            assert files_but_the_running_disk() == before and lab.pid("hv2", name) is None
            assert lab.qmp("hv1", name, "query-status")["status"] == "running"

        ring = last_ring(tap)
        after = time.monotonic()
        result = lab.migrate(name, "hv1", "hv2", livemig_allow_cold=True, livemig_powerdown_timeout=0)
        assert not result.failed, result.output
        tap.wait_for(r"^LMREADY", label="hv2", timeout=60, since=after)
        tap.wait_for(r"^PC \d+ OK", label="hv2", timeout=60, since=after)
    assert lab.report(name)["method"] == "cold"
    assert lab.record("hv2", name)["machine"] == "pc-q35-7.2"
    finish_and_check_disk(lab, name, "hv2", digest, ring)
