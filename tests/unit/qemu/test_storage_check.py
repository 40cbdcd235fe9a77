"""Shared storage found with real images: the source marks through the `host` dict (as the role passes it), the
target checks through the separate options, and a disk only one host has is not shared."""
from __future__ import annotations

import subprocess

import conftest

MB = 1 << 20
SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg",
        "disks": [{"name": "root", "size_mb": 8, "format": "qcow2"},
                  {"name": "data", "size_mb": 8, "format": "qcow2", "shared": True}]}


def storage(tmp_path, state, **args) -> dict:
    result = conftest.run_module("qemu_storage_check", tmp_path, name="vm1", spec=SPEC, state=state, **args)
    assert "failed" not in result, result
    return result


def test_marked_on_one_host_and_checked_on_the_other(tmp_path):
    shared = tmp_path / "shared"
    source = {"run_dir": str(tmp_path / "src"), "image_dir": str(tmp_path / "src"), "shared_dir": str(shared)}
    target = {"run_dir": str(tmp_path / "dst"), "image_dir": str(tmp_path / "dst"), "shared_dir": str(shared)}
    for directory in (shared, tmp_path / "src", tmp_path / "dst"):
        directory.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(shared / "vm1-data.qcow2"), str(8 * MB)],
                   check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "src" / "vm1-root.qcow2"),
                    str(4 * MB)], check=True)

    marks = storage(tmp_path, "marked", host=source)
    assert marks["changed"] is True
    sizes = {name: disk.get("virtual_size") for name, disk in marks["disks"].items()}
    assert sizes == {"root": 4 * MB, "data": 8 * MB}
    checked = storage(tmp_path, "checked", token=marks["token"], **target)
    assert {name: disk["same_file"] for name, disk in checked["disks"].items()} == {"root": False, "data": True}

    assert storage(tmp_path, "unmarked", host=source)["changed"] is True
    assert list(shared.glob(".*")) == [] and list((tmp_path / "src").glob(".*")) == []
    assert storage(tmp_path, "unmarked", host=source)["changed"] is False
