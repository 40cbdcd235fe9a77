from __future__ import annotations

import os
import shutil
import time

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils import _statefile
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._probe import host_facts
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._schema import schema_features
from ansible_collections.livemig.qemu.plugins.module_utils._statefile import (
    StateFileError, restore_state, save_state, state_transports, supports_file_uri)

MB = 1 << 20
RAM_MB = 16
COUNTER = 0x1000
# Boot sector: cli; xor ax,ax; mov ds,ax; loop: inc dword [0x1000]; jmp loop. With interrupts off, the counter is
# the only guest RAM that changes while the VM runs.
BOOT_SECTOR = bytes([0xFA, 0x31, 0xC0, 0x8E, 0xD8, 0x66, 0xFF, 0x06, 0x00, 0x10, 0xEB, 0xF9]).ljust(510, b"\0") \
    + b"\x55\xaa"


# -- helpers ---------------------------------------------------------------------------------

def guest_args(tmp_path, name, machine="pc", incoming=False, random_ram=False):
    """A guest running the boot-sector loop; its own copy of the disk (QEMU locks images)."""
    image = tmp_path / f"{name}.img"
    image.write_bytes(BOOT_SECTOR.ljust(MB, b"\0"))  # SeaBIOS cannot boot a one-sector AHCI disk (q35)
    if random_ram:
        ram_file = tmp_path / f"{name}.ram"
        ram_file.write_bytes(os.urandom(RAM_MB * MB))
        backend = f"memory-backend-file,id=ram,size={RAM_MB}M,mem-path={ram_file},share=off"
    else:
        backend = f"memory-backend-ram,id=ram,size={RAM_MB}M"
    args = ["-machine", f"{machine},memory-backend=ram", "-m", str(RAM_MB), "-object", backend,
            "-drive", f"file={image},format=raw,if=ide"]
    return args + ["-incoming", "defer"] if incoming else args


def wait_counting(session, timeout=10.0):
    """Wait until the guest runs its loop (past the firmware): the counter moves."""
    assert conftest.guest_keeps_changing(session, COUNTER, "w", timeout), "the guest never reached its loop"


def ram(session, path):
    session.execute("pmemsave", {"val": 0, "size": RAM_MB * MB, "filename": str(path)})
    data = bytearray(path.read_bytes())
    data[COUNTER:COUNTER + 4] = bytes(4)
    return bytes(data), int.from_bytes(path.read_bytes()[COUNTER:COUNTER + 4], "little")


def version(session):
    qemu = session.execute("query-version")["qemu"]
    return f"{qemu['major']}.{qemu['minor']}"


def status(session):
    return session.execute("query-status")["status"]


def leftovers(tmp_path):
    return sorted(entry.name for entry in tmp_path.iterdir() if ".state" in entry.name)


@pytest.fixture
def sessions():
    opened = []

    def connect(vm):
        session = QMPSession(vm.qmp, connect_timeout=5).connect()
        opened.append(session)
        return session

    yield connect
    for session in opened:
        session.close()


@pytest.fixture
def source(qemu, tmp_path, sessions):
    src = sessions(qemu("source", *guest_args(tmp_path, "source", random_ram=True)))
    wait_counting(src)
    return src


@pytest.fixture(params=["file", "exec"])
def transport(request, monkeypatch):
    if request.param == "exec":
        monkeypatch.setattr(_statefile, "supports_file_uri", lambda session: False)
    return request.param


# -- what QEMU 10.0 can do -------------------------------------------------------------------

def test_schema_says_qemu_10_loads_and_saves_files(qemu, sessions):
    session = sessions(qemu("probe", "-machine", "none", "-S"))
    assert supports_file_uri(session) is True
    assert schema_features(session) == {"file": True, "exit_on_error": True,
                                        "multifd_compressions": ["none", "zlib", "zstd"]}
    assert state_transports(session) == ["exec", "file"]


def test_host_facts_list_the_state_transports():
    assert host_facts(conftest.qemu_program(), check_kvm=False)["state_transports"] == ["exec", "file"]


# -- save and restore ------------------------------------------------------------------------

def test_save_and_restore(qemu, tmp_path, sessions, source, transport):
    path = str(tmp_path / "vm.state")
    before = time.time()
    saved = save_state(source, path, timeout=30)
    assert saved["transport"] == transport
    assert saved["was_running"] is True
    assert saved["status"] == status(source) == "postmigrate"
    assert saved["size"] == os.path.getsize(path) > (RAM_MB - 2) * MB  # random RAM: few pages compress away
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert leftovers(tmp_path) == ["vm.state"]
    assert before <= saved["stop_time"] <= saved["completed_time"] <= time.time()
    assert saved["total_time_ms"] >= 0

    target = sessions(qemu("target", *guest_args(tmp_path, "target", incoming=True)))
    restored = restore_state(target, path, timeout=30)
    assert restored["transport"] == transport and restored["size"] == saved["size"]
    assert restored["status"] == status(target) == "running"
    assert saved["completed_time"] <= restored["resume_time"] <= time.time()
    assert 0 < restored["load_time_ms"] < 10000
    wait_counting(target)  # the guest goes on from the restored state

    target.execute("stop")
    source_ram, source_count = ram(source, tmp_path / "source.dump")
    target_ram, target_count = ram(target, tmp_path / "target.dump")
    assert source_ram == target_ram
    assert target_count > source_count


def test_capabilities_left_by_a_live_migration_are_switched_off(qemu, tmp_path, sessions, source, transport):
    """A VM that arrived by a live migration keeps the target's capabilities (post-copy, multifd): a state file
    carries neither, so saving switches them off."""
    source.execute("migrate-set-capabilities", {"capabilities": [{"capability": "postcopy-ram", "state": True},
                                                                 {"capability": "multifd", "state": False}]})
    source.execute("migrate-set-capabilities", {"capabilities": [{"capability": "xbzrle", "state": True}]})
    saved = save_state(source, str(tmp_path / "vm.state"), timeout=30)
    assert saved["transport"] == transport
    enabled = {item["capability"] for item in source.execute("query-migrate-capabilities") if item["state"]}
    assert enabled == {"events"}


def test_restore_without_resume_keeps_the_vm_paused(qemu, tmp_path, sessions, source):
    path = str(tmp_path / "vm.state")
    save_state(source, path, timeout=30)
    target = sessions(qemu("target", *guest_args(tmp_path, "target", incoming=True)))
    restored = restore_state(target, path, timeout=30, resume=False)
    assert restored["status"] == status(target) == "paused"
    assert restored["resume_time"] is None
    assert ram(source, tmp_path / "source.dump") == ram(target, tmp_path / "target.dump")


def test_save_of_a_paused_vm_stays_paused_on_failure_and_success(tmp_path, source):
    source.execute("stop")
    with pytest.raises(StateFileError):
        save_state(source, str(tmp_path / "missing" / "vm.state"), timeout=30)
    assert status(source) == "paused"
    saved = save_state(source, str(tmp_path / "vm.state"), timeout=30)
    assert saved["was_running"] is False and saved["stop_time"] is None
    assert status(source) == "postmigrate"


# -- failures --------------------------------------------------------------------------------

def test_save_into_a_missing_directory_fails_before_stopping(tmp_path, source, transport):
    path = str(tmp_path / "missing" / "vm.state")
    with pytest.raises(StateFileError, match="cannot create the state file .*No such file or directory") as caught:
        save_state(source, path, timeout=30)
    assert caught.value.vm_running is True
    assert status(source) == "running"
    assert not os.path.exists(tmp_path / "missing")


def test_save_timeout_cancels_removes_and_resumes(tmp_path, source, transport):
    path = str(tmp_path / "vm.state")
    with pytest.raises(StateFileError, match="did not complete in time") as caught:
        save_state(source, path, timeout=0.001)
    assert caught.value.vm_running is True
    assert "rollback problems" not in str(caught.value)
    assert status(source) == "running"
    # The save may finish in the instant between the deadline and the cancel: it is rolled back all the same.
    assert source.execute("query-migrate")["status"] in ("cancelled", "completed")
    assert leftovers(tmp_path) == []
    wait_counting(source)


def test_failure_after_completion_resumes_the_vm(tmp_path, source, monkeypatch):
    """The state reached the file but cannot be made durable: the VM, paused in postmigrate, runs again."""
    def broken_fsync(descriptor):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_statefile.os, "fsync", broken_fsync)
    with pytest.raises(StateFileError, match="Input/output error") as caught:
        save_state(source, str(tmp_path / "vm.state"), timeout=30)
    assert caught.value.vm_running is True
    assert status(source) == "running"
    assert leftovers(tmp_path) == []


def test_save_refuses_while_a_migration_runs(tmp_path, source):
    source.execute("migrate-set-parameters", {"max-bandwidth": 1 * MB})
    source.execute("migrate", {"uri": "exec:cat > /dev/null"})
    with pytest.raises(StateFileError, match="a migration is already (setup|active)"):
        save_state(source, str(tmp_path / "vm.state"), timeout=30)
    assert source.execute("query-migrate")["status"] in ("setup", "active")
    assert status(source) == "running"
    source.execute("migrate_cancel")


def test_restore_from_a_missing_file(qemu, tmp_path, sessions):
    target = sessions(qemu("target", *guest_args(tmp_path, "target", incoming=True)))
    with pytest.raises(StateFileError, match="vm.state does not exist"):
        restore_state(target, str(tmp_path / "vm.state"), timeout=30)
    assert status(target) == "inmigrate"


def test_restore_from_a_truncated_file(qemu, tmp_path, sessions, source, transport):
    path = tmp_path / "vm.state"
    save_state(source, str(path), timeout=30)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    target = sessions(qemu("target", *guest_args(tmp_path, "target", incoming=True)))
    with pytest.raises(StateFileError, match=r"loading the VM state from .* failed: QEMU reports the migration "
                                             r"failed: .+") as caught:
        restore_state(target, str(path), timeout=30)
    assert caught.value.vm_running is False
    assert status(target) != "running"


def test_restore_refuses_a_qemu_not_waiting(tmp_path, source):
    with pytest.raises(StateFileError, match="QEMU is running, not waiting for an incoming migration"):
        restore_state(source, str(tmp_path / "vm.state"), timeout=30)


# -- the module ------------------------------------------------------------------------------

def run_module(tmp_path, check=False, **args):
    return conftest.run_module("qemu_vm_state", tmp_path, check, **{"name": "vm1", "run_dir": str(tmp_path), **args})


def vm_args(tmp_path, name, **kwargs):
    """The guest as VM `name` of a host whose run directory is tmp_path: its pid file and its job monitor."""
    paths = VMPaths.on_host(name, str(tmp_path))
    return [*guest_args(tmp_path, name, **kwargs), "-pidfile", paths.pidfile,
            "-chardev", f"socket,id=job,path={paths.job_qmp},server=on,wait=off", "-mon", "chardev=job,mode=control"]


def test_module_save_restore_absent(qemu, tmp_path, sessions):
    first = qemu("vm1", *vm_args(tmp_path, "vm1"))
    vm = sessions(first)
    wait_counting(vm)
    path = tmp_path / "vm1" / "state"  # the default: <state_dir>/<name>/state, state_dir defaulting to run_dir

    check = run_module(tmp_path, check=True, state="saved")
    assert check["changed"] is True and "would stop" in check["msg"]
    assert status(vm) == "running" and not path.exists()

    saved = run_module(tmp_path, state="saved")
    assert saved["changed"] is True, saved
    assert saved["path"] == str(path) and saved["status"] == "postmigrate" and path.stat().st_size == saved["size"]
    again = run_module(tmp_path, state="saved")
    assert again["changed"] is False and "already saved" in again["msg"]

    shutil.copy(path, tmp_path / "copy.state")
    refused = run_module(tmp_path, state="restored")
    assert refused["failed"] is True and "not waiting for an incoming migration" in refused["msg"]

    vm.execute("quit")
    first.process.wait(10)
    restored = sessions(qemu("vm1", *vm_args(tmp_path, "vm1", incoming=True)))
    check = run_module(tmp_path, check=True, state="restored", path=str(tmp_path / "copy.state"))
    assert check["changed"] is True and status(restored) == "inmigrate"
    done = run_module(tmp_path, state="restored", path=str(tmp_path / "copy.state"))
    assert done["changed"] is True and done["status"] == "running", done
    again = run_module(tmp_path, state="restored", path=str(tmp_path / "copy.state"))
    assert again["changed"] is False

    check = run_module(tmp_path, check=True, state="absent")
    assert check["changed"] is True and path.exists()
    assert run_module(tmp_path, state="absent")["changed"] is True and not path.exists()
    assert run_module(tmp_path, state="absent")["changed"] is False


def test_module_refuses_a_vm_that_does_not_run_here(tmp_path):
    result = run_module(tmp_path, state="saved")
    assert result["failed"] is True and "no QEMU of this VM runs on this host" in result["msg"]
    result = run_module(tmp_path, state="saved", path="relative.state")
    assert result["failed"] is True and "must be absolute" in result["msg"]


# -- QEMU 7.2 <-> 10.0 -----------------------------------------------------------------------

@pytest.mark.parametrize("machine", ["pc-i440fx-7.2", "pc-q35-7.2"])
@pytest.mark.parametrize("direction", ["10.0 to 7.2", "7.2 to 10.0"])
def test_state_moves_between_qemu_7_2_and_10_0(qemu, qemu_72, tmp_path, sessions, machine, direction):
    """Each side uses the transport its own QEMU offers: 10.0 file:, 7.2 exec: (the streams are the same)."""
    binaries = {"10.0": shutil.which("qemu-system-x86_64"), "7.2": qemu_72}
    source_version, target_version = direction.split(" to ")
    src = sessions(qemu("source", *guest_args(tmp_path, "source", machine=machine, random_ram=True),
                        binary=binaries[source_version]))
    assert version(src) == source_version and schema_features(src)["file"] == (source_version == "10.0")
    wait_counting(src)
    path = str(tmp_path / "vm.state")
    expected = {"10.0": "file", "7.2": "exec"}
    assert save_state(src, path, timeout=30)["transport"] == expected[source_version]
    tgt = sessions(qemu("target", *guest_args(tmp_path, "target", machine=machine, incoming=True),
                        binary=binaries[target_version]))
    assert version(tgt) == target_version
    restored = restore_state(tgt, path, timeout=30, resume=False)
    assert restored["status"] == "paused" and restored["transport"] == expected[target_version]
    assert ram(src, tmp_path / "source.dump") == ram(tgt, tmp_path / "target.dump")
    tgt.execute("cont")
    wait_counting(tgt)


def test_qemu_7_2_exits_on_a_truncated_file(qemu, qemu_72, tmp_path, sessions):
    src = sessions(qemu("source", *guest_args(tmp_path, "source", machine="pc-i440fx-7.2"), binary=qemu_72))
    target = sessions(qemu("target", *guest_args(tmp_path, "target", machine="pc-i440fx-7.2", incoming=True),
                           binary=qemu_72))
    assert version(target) == "7.2" and schema_features(target)["file"] is False
    assert schema_features(target)["exit_on_error"] is False
    wait_counting(src)
    path = tmp_path / "vm.state"
    assert save_state(src, str(path), timeout=30)["transport"] == "exec"
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(StateFileError, match="failed: QEMU went away") as caught:
        restore_state(target, str(path), timeout=30)
    assert caught.value.vm_running is False
