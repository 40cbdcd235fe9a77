from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._state import (
    HostRecord, LegacyLayoutError, adopt_legacy, load_record, process_alive, qemu_pid, remove_record, save_record)


def test_save_load_round_trip(tmp_path):
    path = str(tmp_path / "state" / "vm1.json")
    record = HostRecord(vm="vm1", owner=True, machine="pc-q35-10.0", accel="tcg", handed_over_to=None,
                        volatile={"pid": 4242, "sockets": {"qmp": "/run/vm1.qmp"}, "nbd_port": 10809})
    save_record(path, record)
    loaded = load_record(path, "vm1")
    assert loaded == record
    assert loaded.pid == 4242
    with open(path, encoding="utf-8") as handle:
        assert json.load(handle)["machine"] == "pc-q35-10.0"
    # The state directory is created private.
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700


def test_save_replaces_the_previous_record(tmp_path):
    path = str(tmp_path / "vm1.json")
    save_record(path, HostRecord(vm="vm1", owner=True, volatile={"pid": 1}))
    save_record(path, HostRecord(vm="vm1", owner=False, handed_over_to="host-b"))
    loaded = load_record(path, "vm1")
    assert loaded == HostRecord(vm="vm1", owner=False, handed_over_to="host-b")
    assert loaded.pid is None


def test_load_takes_the_vm_name_from_the_caller_and_ignores_unknown_keys(tmp_path):
    path = tmp_path / "vm1.json"
    path.write_text(json.dumps({"vm": "other", "owner": True, "accel": "kvm", "future_key": 1}))
    assert load_record(str(path), "vm1") == HostRecord(vm="vm1", owner=True, accel="kvm")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path = str(tmp_path / "vm1.json")
    for pid in range(5):
        save_record(path, HostRecord(vm="vm1", volatile={"pid": pid}))
    assert sorted(os.listdir(tmp_path)) == ["vm1.json"]


def test_failed_write_keeps_the_old_record_and_no_temporary_file(tmp_path):
    path = str(tmp_path / "vm1.json")
    save_record(path, HostRecord(vm="vm1", owner=True, volatile={"pid": 7}))
    with pytest.raises(TypeError):
        save_record(path, HostRecord(vm="vm1", volatile={"pid": object()}))
    assert sorted(os.listdir(tmp_path)) == ["vm1.json"]
    assert load_record(path, "vm1") == HostRecord(vm="vm1", owner=True, volatile={"pid": 7})


def test_load_of_a_missing_record_returns_none(tmp_path):
    assert load_record(str(tmp_path / "absent.json"), "absent") is None
    assert load_record(str(tmp_path / "no-dir" / "absent.json"), "absent") is None


def test_remove_record_is_idempotent(tmp_path):
    path = str(tmp_path / "vm1.json")
    save_record(path, HostRecord(vm="vm1"))
    assert remove_record(path) is True
    assert not os.path.exists(path)
    assert remove_record(path) is False
    assert load_record(path, "vm1") is None


def test_process_alive_for_this_process():
    assert process_alive(os.getpid()) is True


def test_process_alive_false_for_nothing():
    assert process_alive(None) is False
    assert process_alive(0) is False


def test_process_alive_false_for_a_finished_child():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    assert process_alive(child.pid) is False


def test_process_alive_false_for_a_zombie_child():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        # Not reaped yet: the pid still exists, as a zombie.
        while True:
            with open(f"/proc/{child.pid}/stat", encoding="ascii") as handle:
                if handle.read().split(") ", 1)[1][0] == "Z":
                    break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert process_alive(child.pid) is False
    finally:
        child.wait(10)


def test_process_alive_true_for_a_running_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_alive(child.pid) is True
    finally:
        child.kill()
        child.wait(10)
    assert process_alive(child.pid) is False


# -- the record of livemig.qemu 0.3 -------------------------------------------------------------

def old_host(tmp_path) -> VMPaths:
    """A host where 0.3 left VM vm1: its record <state_dir>/vm1.json and its state file <state_dir>/vm1.state."""
    paths = VMPaths.on_host("vm1", str(tmp_path / "run"), state_dir=str(tmp_path / "state"))
    os.makedirs(paths.state_dir, mode=0o755)
    with open(paths.legacy.record, "w", encoding="utf-8") as handle:
        json.dump({"owner": True, "machine": "pc-q35-7.2", "accel": "tcg"}, handle)
    with open(paths.legacy.state_file, "wb") as handle:
        handle.write(b"saved state")
    return paths


def test_a_record_of_0_3_is_moved_into_the_vms_directory(tmp_path):
    paths = old_host(tmp_path)
    adopt_legacy(paths)
    assert load_record(paths.record, "vm1") == HostRecord(vm="vm1", owner=True, machine="pc-q35-7.2", accel="tcg")
    with open(paths.state_file, "rb") as handle:
        assert handle.read() == b"saved state"
    assert not os.path.exists(paths.legacy.record) and not os.path.exists(paths.legacy.state_file)
    assert stat.S_IMODE(os.stat(paths.vm_state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(paths.state_dir).st_mode) == 0o700, "checked, not only set when created"
    adopt_legacy(paths)  # nothing left to move
    assert load_record(paths.record, "vm1").owner is True


def test_a_record_in_the_vms_directory_wins_over_an_old_one(tmp_path):
    paths = old_host(tmp_path)
    save_record(paths.record, HostRecord(vm="vm1", owner=False, handed_over_to="hv2"))
    adopt_legacy(paths)
    assert load_record(paths.record, "vm1").handed_over_to == "hv2" and os.path.exists(paths.legacy.record)


def test_a_vm_whose_qemu_of_0_3_still_runs_is_refused_and_nothing_moves(tmp_path):
    paths = old_host(tmp_path)
    os.makedirs(paths.run_dir)
    # A process whose command line names the old monitor, as QEMU's does: `-chardev socket,...,path=<run>/vm1.qmp`.
    old_qemu = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", f"path={paths.legacy.qmp}"])
    try:
        with open(paths.legacy.pidfile, "w", encoding="ascii") as handle:
            handle.write(f"{old_qemu.pid}\n")
        assert qemu_pid(paths.legacy.pidfile, paths.legacy.qmp) == old_qemu.pid
        with pytest.raises(LegacyLayoutError) as error:
            adopt_legacy(paths)
        assert str(error.value) == (
            f"VM vm1 runs under the file layout of livemig.qemu 0.3 ({paths.legacy.qmp}): stop it with that version, "
            f"or end its QEMU (pid {old_qemu.pid}) yourself; the next run then moves its record into "
            f"{paths.vm_state_dir}")
        assert os.path.exists(paths.legacy.record) and not os.path.exists(paths.record)
    finally:
        old_qemu.kill()
        old_qemu.wait(10)
    adopt_legacy(paths)  # that QEMU is gone: the record moves
    assert load_record(paths.record, "vm1").owner is True


def test_a_pid_file_names_a_qemu_only_when_that_process_serves_the_monitor(tmp_path):
    pidfile = tmp_path / "pid"
    pidfile.write_text(f"{os.getpid()}\n", encoding="ascii")  # alive, but its command line names no monitor
    assert qemu_pid(str(pidfile), str(tmp_path / "vm1" / "qmp")) is None
    assert qemu_pid(str(tmp_path / "missing"), "qmp") is None
