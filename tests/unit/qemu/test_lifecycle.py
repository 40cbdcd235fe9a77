"""qemu_vm's ownership rules against a real QEMU."""
from __future__ import annotations

import os
import stat

import conftest

from ansible_collections.livemig.qemu.plugins.module_utils._state import process_alive

SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg"}


def test_a_target_takes_the_vm_over_only_once_its_incoming_migration_completed(qemu, tmp_path):
    """A QEMU that runs here without a completed incoming migration (post-copy not finished, or never migrated)
    is not claimed: the source may still hold part of the guest."""
    qemu("vm1", "-machine", "pc", "-m", "32", "-S", "-pidfile", str(tmp_path / "vm1" / "pid"))
    result = conftest.run_module("qemu_vm", tmp_path, name="vm1", run_dir=str(tmp_path), image_dir=str(tmp_path),
                                 spec=SPEC, migration_target=True)
    assert result["failed"] is True, result
    assert "the incoming migration has not completed (status None)" in result["msg"]
    assert not (tmp_path / "vm1" / "record.json").exists(), "no ownership record written"


def test_a_claimed_vm_starts_with_its_disk_and_private_files_and_is_removed(tmp_path):
    """QEMU daemonizes through run_command (with the module's umask 077) and qemu-img creates the missing disk."""
    dirs = {"name": "vm1", "run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images")}
    spec = {**SPEC, "disks": [{"name": "root", "size_mb": 8, "format": "qcow2"}]}
    started = conftest.run_module("qemu_vm", tmp_path, spec=spec, claim=True, **dirs)
    try:
        assert started["changed"] is True and started["status"] == "running" and started["owner"] is True, started
        assert started["argv"][0] == conftest.QEMU
        assert (tmp_path / "images" / "vm1-root.qcow2").is_file()
        assert stat.S_IMODE(os.stat(tmp_path / "run" / "vm1" / "log").st_mode) == 0o600
    finally:
        removed = conftest.run_module("qemu_vm", tmp_path, state="absent", **dirs)
    assert removed["changed"] is True and removed["stopped_by"] == "quit", removed
    assert not (tmp_path / "images" / "vm1-root.qcow2").exists()
    assert not process_alive(started["pid"])
