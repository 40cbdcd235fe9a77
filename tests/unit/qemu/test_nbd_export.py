"""qemu_nbd_export against a real QEMU: the exports of the VM's disk nodes, found again through the `host` dict
or the separate options alike."""
from __future__ import annotations

import json
import socket

import conftest

from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record

DISK = json.dumps({"driver": "null-co", "node-name": "disk-root", "size": 8 << 20})


def export(tmp_path, check_mode=False, **args) -> dict:
    result = conftest.run_module("qemu_nbd_export", tmp_path, check_mode, name="vm1", **args)
    assert "failed" not in result, result
    return result


def test_exports_through_the_host_dict_are_found_through_the_options(qemu, tmp_path):
    qemu("vm1", "-blockdev", DISK)
    host, options = {"host": {"run_dir": str(tmp_path)}}, {"run_dir": str(tmp_path)}

    planned = export(tmp_path, check_mode=True, address="127.0.0.1", disks=["root"], **host)
    assert planned["changed"] is True and planned["exports"] == {} and "port" not in planned
    assert load_record(str(tmp_path / "vm1" / "record.json"), "vm1") is None

    started = export(tmp_path, address="127.0.0.1", disks=["root"], **host)
    assert started["changed"] is True and started["host"] == "127.0.0.1" and list(started["exports"]) == ["root"]
    with socket.create_connection(("127.0.0.1", started["port"]), timeout=5):
        pass
    assert load_record(str(tmp_path / "vm1" / "record.json"), "vm1").volatile["nbd"] == {
        "host": "127.0.0.1", "port": started["port"], "exports": started["exports"]}

    again = export(tmp_path, address="127.0.0.1", disks=["root"], **options)
    assert again["changed"] is False
    assert (again["port"], again["exports"]) == (started["port"], started["exports"])

    assert export(tmp_path, state="absent", **options)["changed"] is True
    assert "nbd" not in load_record(str(tmp_path / "vm1" / "record.json"), "vm1").volatile
    assert export(tmp_path, state="absent", **host)["changed"] is False


def test_a_busy_port_that_was_asked_for_fails_naming_the_monitor(qemu, tmp_path):
    qemu("vm1", "-blockdev", DISK)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = conftest.run_module("qemu_nbd_export", tmp_path, name="vm1", host={"run_dir": str(tmp_path)},
                                     address="127.0.0.1", port=busy.getsockname()[1], disks=["root"])
    assert result["failed"] is True
    assert result["msg"].startswith(f"QMP on {tmp_path / 'vm1' / 'qmp'}: ") and result["qmp_command"] == "nbd-server-start"
    assert load_record(str(tmp_path / "vm1" / "record.json"), "vm1") is None
