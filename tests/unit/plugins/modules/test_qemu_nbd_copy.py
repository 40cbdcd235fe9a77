"""qemu_nbd_copy's receiving states find the VM's record through the `host` dict or the separate options; the
sending state needs neither. No qemu-nbd runs here (tests/unit/qemu/test_nbd_copy.py copies for real)."""
from __future__ import annotations

import os

import conftest

from ansible_collections.livemig.qemu.plugins.module_utils._state import HostRecord, load_record, save_record


def host_with_a_finished_copy(tmp_path) -> dict[str, str]:
    """A record in the state directory of a copy whose server has already exited (its pid is long gone)."""
    dirs = {"run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images"),
            "state_dir": str(tmp_path / "records")}
    (tmp_path / "run" / "vm1").mkdir(parents=True)
    pidfile = tmp_path / "run" / "vm1" / "copy-root.pid"
    pidfile.write_text("999999999\n", encoding="ascii")
    server = {"host": "127.0.0.1", "port": 1, "export": "root-x", "path": str(tmp_path / "images" / "vm1-root.qcow2"),
              "format": "qcow2", "pidfile": str(pidfile), "pid": 999999999}
    save_record(str(tmp_path / "records" / "vm1" / "record.json"), HostRecord(vm="vm1", volatile={"copy:root": server}))
    return dirs


def finish(tmp_path, **location) -> dict:
    return conftest.run_module("qemu_nbd_copy", tmp_path, state="finished", name="vm1", label="root", fsync=False,
                               **location)


def test_finished_through_the_host_dict_and_through_the_options_alike(tmp_path):
    for label, location in (("host", lambda dirs: {"host": dirs}), ("options", lambda dirs: dirs)):
        work = tmp_path / label
        work.mkdir()
        dirs = host_with_a_finished_copy(work)
        result = finish(work, **location(dirs))
        assert result["changed"] is True, result
        assert result["msg"] == f"copy root into {work / 'images' / 'vm1-root.qcow2'} finished"
        assert load_record(os.path.join(dirs["state_dir"], "vm1", "record.json"), "vm1").volatile == {}
        assert not (work / "run" / "vm1" / "copy-root.pid").exists()
        again = finish(work, **location(dirs))
        assert again["changed"] is False and again["msg"] == "no server recorded for copy root"


def test_the_host_dict_and_run_dir_together_are_refused(tmp_path):
    result = finish(tmp_path, host={"run_dir": str(tmp_path)}, run_dir=str(tmp_path))
    assert result["failed"] is True and result["msg"] == "parameters are mutually exclusive: host|run_dir"


def test_a_receiving_state_needs_the_host_dict_or_run_dir(tmp_path):
    for state, args in (("finished", {}), ("absent", {"path": str(tmp_path / "x.qcow2")}),
                        ("listening", {"path": str(tmp_path / "x.qcow2"), "address": "127.0.0.1"})):
        result = conftest.run_module("qemu_nbd_copy", tmp_path, state=state, name="vm1", label="root", **args)
        assert result["failed"] is True
        assert result["msg"] == f"state is {state} but any of the following are missing: host, run_dir"


def test_a_receiving_state_still_needs_its_own_options(tmp_path):
    result = conftest.run_module("qemu_nbd_copy", tmp_path, state="absent", host={"run_dir": str(tmp_path)})
    assert result["failed"] is True
    assert result["msg"] == "state is absent but all of the following are missing: name, label, path"


def test_sending_needs_no_host(tmp_path):
    result = conftest.run_module("qemu_nbd_copy", tmp_path, check_mode=True, state="sent", src=str(tmp_path),
                                 uri="nbd://127.0.0.1:1/x")
    assert result["failed"] is True
    assert result["msg"] == f"src {tmp_path} must be an absolute path to an existing file or block device on this host"
