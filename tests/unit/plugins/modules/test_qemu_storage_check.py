"""qemu_storage_check finds a VM's images through the `host` dict or the separate options alike.
O(state=checked) runs no qemu-img; tests/unit/qemu/test_storage_check.py marks real images."""
from __future__ import annotations

import conftest

TOKEN = "0123456789abcdef0123456789abcdef"
SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg",
        "disks": [{"name": "root", "size_mb": 8, "format": "qcow2"},
                  {"name": "data", "size_mb": 8, "format": "raw", "shared": True}]}


def marked_host(tmp_path) -> dict[str, str]:
    """A host whose local root image and shared data image both carry the token."""
    dirs = {"run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images"),
            "shared_dir": str(tmp_path / "shared")}
    for directory, image in (("images", "vm1-root.qcow2"), ("shared", "vm1-data.raw")):
        (tmp_path / directory).mkdir()
        (tmp_path / directory / image).write_bytes(b"")
        (tmp_path / directory / f".{image}.livemig-token").write_text(TOKEN + "\n", encoding="ascii")
    return dirs


def check(tmp_path, **location) -> dict:
    return conftest.run_module("qemu_storage_check", tmp_path, name="vm1", spec=SPEC, state="checked", token=TOKEN,
                               **location)


def test_checked_through_the_host_dict_and_through_the_options_alike(tmp_path):
    dirs = marked_host(tmp_path)
    in_one, separate = check(tmp_path, host=dirs), check(tmp_path, **dirs)
    assert in_one == {**separate, "invocation": in_one["invocation"]}
    assert in_one["changed"] is False and in_one["token"] == TOKEN
    assert in_one["disks"] == {
        "root": {"path": str(tmp_path / "images" / "vm1-root.qcow2"), "exists": True, "same_file": True},
        "data": {"path": str(tmp_path / "shared" / "vm1-data.raw"), "exists": True, "same_file": True}}


def test_an_empty_shared_dir_in_the_host_dict_means_none(tmp_path):
    dirs = marked_host(tmp_path)
    result = check(tmp_path, host={**dirs, "shared_dir": ""})
    assert result["disks"]["data"] == {"path": str(tmp_path / "images" / "vm1-data.raw"), "exists": False,
                                       "same_file": False}


def test_unmarked_through_the_host_dict(tmp_path):
    dirs = marked_host(tmp_path)
    result = conftest.run_module("qemu_storage_check", tmp_path, name="vm1", spec=SPEC, state="unmarked", host=dirs)
    assert result["changed"] is True and "token" not in result
    assert not (tmp_path / "images" / ".vm1-root.qcow2.livemig-token").exists()
    assert not (tmp_path / "shared" / ".vm1-data.raw.livemig-token").exists()


def test_the_host_dict_and_a_separate_option_together_are_refused(tmp_path):
    result = check(tmp_path, host={"run_dir": str(tmp_path)}, shared_dir=str(tmp_path))
    assert result["failed"] is True and result["msg"] == "parameters are mutually exclusive: host|shared_dir"


def test_the_host_dict_or_run_dir_is_required(tmp_path):
    result = check(tmp_path)
    assert result["failed"] is True and result["msg"] == "one of the following is required: host, run_dir"
