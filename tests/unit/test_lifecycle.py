"""qemu_vm's ownership rules against a real QEMU."""
from __future__ import annotations

import conftest

SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg"}


def test_a_target_takes_the_vm_over_only_once_its_incoming_migration_completed(qemu, tmp_path):
    """A QEMU that runs here without a completed incoming migration (post-copy not finished, or never migrated)
    is not claimed: the source may still hold part of the guest."""
    qemu("vm1", "-machine", "pc", "-m", "32", "-S", "-pidfile", str(tmp_path / "vm1.pid"))
    result = conftest.run_module("qemu_vm", tmp_path, name="vm1", run_dir=str(tmp_path), image_dir=str(tmp_path),
                                 spec=SPEC, migration_target=True)
    assert result["failed"] is True, result
    assert "the incoming migration has not completed (status None)" in result["msg"]
    assert not (tmp_path / "vm1.json").exists(), "no ownership record written"
