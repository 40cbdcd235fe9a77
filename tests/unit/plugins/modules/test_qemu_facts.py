"""qemu_facts takes the host's locations and QEMU as the one `host` dict or as the separate options."""
from __future__ import annotations

import conftest

from ansible_collections.livemig.qemu.plugins.module_utils._state import HostRecord, save_record


def known_host(tmp_path) -> dict[str, str]:
    """A host with a record of vm1 in its state directory and a stale pid file of vm2 in its run directory."""
    dirs = {"run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images"),
            "state_dir": str(tmp_path / "records")}
    save_record(str(tmp_path / "records" / "vm1" / "record.json"),
                HostRecord(vm="vm1", owner=True, machine="pc-q35-10.0"))
    (tmp_path / "run" / "vm2").mkdir(parents=True)
    (tmp_path / "run" / "vm2" / "pid").write_text("999999999\n", encoding="ascii")
    return dirs


def vms(result: dict) -> dict:
    assert "failed" not in result, result
    return result["ansible_facts"]["livemig_qemu"]["vms"]


def test_the_host_dict_and_the_separate_options_list_the_same_vms(tmp_path):
    dirs = known_host(tmp_path)
    separate = vms(conftest.run_module("qemu_facts", tmp_path, probe=False, **dirs))
    in_one = vms(conftest.run_module("qemu_facts", tmp_path, probe=False, host={**dirs, "shared_dir": ""}))
    assert in_one == separate
    assert sorted(in_one) == ["vm1", "vm2"]
    assert in_one["vm1"]["owner"] is True and in_one["vm1"]["machine"] == "pc-q35-10.0"
    assert in_one["vm2"]["running"] is False
    assert in_one["vm1"]["legacy_layout"] is False and in_one["vm2"]["legacy_layout"] is False


def test_what_is_no_vm_is_not_listed(tmp_path):
    """Images, an empty directory, a stale pid file of the old layout: none of them is a VM."""
    dirs = known_host(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "vm1-root.qcow2").write_bytes(b"")
    (tmp_path / "run" / "lost+found").mkdir()
    (tmp_path / "run" / "old.pid").write_text("999999999\n", encoding="ascii")
    assert sorted(vms(conftest.run_module("qemu_facts", tmp_path, probe=False, **dirs))) == ["vm1", "vm2"]


def test_a_record_of_the_old_layout_is_listed_as_legacy(tmp_path):
    """livemig.qemu 0.3 kept the record at <state_dir>/<vm>.json; facts read it where it is, and move nothing."""
    dirs = known_host(tmp_path)
    old = tmp_path / "records" / "web1.json"
    old.write_text('{"owner": true, "machine": "pc-q35-7.2", "accel": "tcg"}', encoding="utf-8")
    found = vms(conftest.run_module("qemu_facts", tmp_path, probe=False, **dirs))
    web1 = found["web1"]
    assert (web1["legacy_layout"], web1["owner"], web1["machine"], web1["accel"]) == (True, True, "pc-q35-7.2", "tcg")
    assert (web1["running"], web1["pid"], web1["status"]) == (False, None, None)
    assert old.exists() and not (tmp_path / "records" / "web1").exists()


def test_the_host_dict_defaults_its_directories_like_the_options(tmp_path):
    """state_dir defaults to image_dir, which defaults to run_dir: a record in the run directory is found."""
    save_record(str(tmp_path / "run" / "vm3" / "record.json"), HostRecord(vm="vm3", owner=True))
    assert sorted(vms(conftest.run_module("qemu_facts", tmp_path, probe=False,
                                          host={"run_dir": str(tmp_path / "run")}))) == ["vm3"]


def test_the_qemu_of_the_host_dict_is_the_one_asked(tmp_path):
    missing = str(tmp_path / "qemu")
    result = conftest.run_module("qemu_facts", tmp_path, host={"run_dir": str(tmp_path), "qemu_binary": missing})
    assert result["failed"] is True
    assert result["msg"] == f"{missing} not found on this host: install QEMU or set qemu_binary to its path"


def test_the_host_dict_and_a_separate_option_together_are_refused(tmp_path):
    host = {"run_dir": str(tmp_path)}
    for option, value in (("run_dir", str(tmp_path)), ("state_dir", str(tmp_path)), ("qemu_binary", "qemu")):
        result = conftest.run_module("qemu_facts", tmp_path, probe=False, host=host, **{option: value})
        assert result["failed"] is True
        assert result["msg"] == f"parameters are mutually exclusive: host|{option}"


def test_the_host_dict_needs_its_run_dir(tmp_path):
    result = conftest.run_module("qemu_facts", tmp_path, probe=False, host={"image_dir": str(tmp_path)})
    assert result["failed"] is True
    assert result["msg"] == "missing required arguments: run_dir found in host"


def test_probe_answers_are_kept_per_binary_until_it_changes(tmp_path):
    """The first play probes the real QEMU; the next ones reuse its answers; a changed binary is probed again."""
    run_dir = tmp_path / "run"
    binary = tmp_path / "bin" / "qemu-system-x86_64"
    binary.parent.mkdir()
    binary.symlink_to(conftest.QEMU)
    args = {"run_dir": str(run_dir), "image_dir": str(tmp_path), "qemu_binary": str(binary), "check_kvm": False}
    first = conftest.run_module("qemu_facts", tmp_path, **args)["ansible_facts"]["livemig_qemu"]
    second = conftest.run_module("qemu_facts", tmp_path, **args)["ansible_facts"]["livemig_qemu"]
    assert (first["probe_cached"], second["probe_cached"]) == (False, True)
    assert second["version"] == first["version"] and second["machines"] == first["machines"]
    entries = list((run_dir / ".qemu-probe").iterdir())
    assert len(entries) == 1 and oct(entries[0].stat().st_mode & 0o777) == "0o600"
    assert conftest.run_module("qemu_facts", tmp_path, probe=False, run_dir=str(run_dir))["ansible_facts"][
        "livemig_qemu"]["vms"] == {}, "the cache directory is no VM"

    wrapper = tmp_path / "bin" / "qemu-wrapper"  # another binary at the same path: a QEMU upgrade
    wrapper.write_text(f"#!/bin/sh\nexec {conftest.QEMU} \"$@\"\n")
    wrapper.chmod(0o755)
    binary.unlink()
    wrapper.rename(binary)
    third = conftest.run_module("qemu_facts", tmp_path, **args)["ansible_facts"]["livemig_qemu"]
    assert third["probe_cached"] is False and third["version"] == first["version"]
    assert len(list((run_dir / ".qemu-probe").iterdir())) == 2
