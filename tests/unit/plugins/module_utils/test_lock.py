"""The VM's lease on a host (`_lock`): one holder at a time, expiry, the end of a single run's process, the lease of a
play that ended, and the module that takes and gives it back."""
from __future__ import annotations

import json
import os
import subprocess
import time

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils import _lock
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths


@pytest.fixture
def paths(tmp_path):
    return VMPaths.on_host("web1", str(tmp_path / "run"), state_dir=str(tmp_path / "state"))


def test_a_second_holder_is_refused_with_the_first_ones_name(paths):
    _lock.acquire(paths, "move-1", "migrate from hv1 to hv2", "alice@ctl1", 600)
    with pytest.raises(_lock.LockError) as refused:
        _lock.acquire(paths, "move-2", "start on hv1", "bob@ctl2", 600)
    message = str(refused.value)
    assert "VM web1 is locked on this host by migrate from hv1 to hv2 move-1 of alice@ctl1, since " in message
    assert "livemig_break_lock=move-1" in message
    assert refused.value.details["lock"]["id"] == "move-1"
    assert os.stat(paths.lock).st_mode & 0o777 == 0o600


def test_the_holder_extends_its_own_lease_and_gives_it_back(paths):
    first = _lock.acquire(paths, "move-1", "migrate", "alice", 10)
    again = _lock.acquire(paths, "move-1", "migrate", "alice", 600)
    assert again["acquired"] == first["acquired"] and again["expires"] > first["expires"]
    assert _lock.release(paths, "move-2") is False and _lock.current(paths)["id"] == "move-1"
    assert _lock.release(paths, "move-1") is True and _lock.current(paths) is None
    assert not os.path.exists(paths.vm_state_dir), "a VM with nothing else here leaves no directory"


def test_the_plays_last_run_on_a_host_gives_the_lease_back_only_when_it_succeeds(paths):
    """lock_release: the play's last call here gives the lease back itself; a failed one keeps it for the
    rollback."""
    _lock.acquire(paths, "move-1", "migrate", "alice", 600)
    with pytest.raises(RuntimeError):
        with _lock.held(paths, "move-1", "qemu_vm", give_back=True):
            raise RuntimeError("the retire failed")
    assert _lock.current(paths)["id"] == "move-1" and _lock.current(paths)["pids"] == []
    with _lock.held(paths, "move-1", "qemu_vm", give_back=True):
        assert _lock.current(paths)["pids"] == [os.getpid()]
    assert _lock.current(paths) is None


def test_an_expired_lease_holds_nothing(paths):
    _lock.acquire(paths, "move-1", "migrate", "alice", 0.05)
    time.sleep(0.1)
    assert _lock.current(paths) is None
    assert _lock.acquire(paths, "move-2", "start", "bob", 600)["id"] == "move-2"


def test_a_single_runs_lease_ends_with_its_process(paths):
    gone = subprocess.Popen(["true"])
    gone.wait()
    _lock.acquire(paths, "run-1", "qemu_vm", "a single run", _lock.RUN_TTL, pid=gone.pid)
    assert _lock.current(paths) is None
    _lock.acquire(paths, "run-2", "qemu_vm", "a single run", _lock.RUN_TTL, pid=os.getpid())
    assert _lock.current(paths)["id"] == "run-2"


def test_a_lease_of_a_play_that_spans_a_host_whose_lease_we_hold_is_superseded(paths):
    _lock.acquire(paths, "move-1", "migrate from hv1 to hv2", "alice", 600, hosts=["hv1", "hv2"])
    with pytest.raises(_lock.LockError):
        _lock.acquire(paths, "move-2", "migrate from hv3 to hv2", "bob", 600, hosts=["hv3", "hv2"], holding="hv3")
    taken = _lock.acquire(paths, "move-3", "migrate from hv1 to hv2", "bob", 600, hosts=["hv1", "hv2"],
                          holding="hv1")
    assert taken["id"] == "move-3" and _lock.current(paths)["hosts"] == ["hv1", "hv2"]


def test_a_run_of_its_own_takes_a_lease_for_its_length_and_leaves_no_directory(paths):
    with _lock.held(paths, None, "livemig.qemu.qemu_vm"):
        lease = _lock.current(paths)
        assert lease["pid"] == os.getpid() and lease["id"].startswith("run-")
        with pytest.raises(_lock.LockError):
            _lock.acquire(paths, "move-1", "migrate", "alice", 600)
    assert _lock.current(paths) is None
    assert not os.path.exists(paths.state_dir)


def test_a_run_of_a_play_takes_the_plays_lease_when_it_is_free_and_keeps_it(paths):
    with _lock.held(paths, "move-1", "livemig.qemu.qemu_vm"):
        pass
    assert _lock.current(paths)["id"] == "move-1"
    with pytest.raises(_lock.LockError):
        with _lock.held(paths, "move-2", "livemig.qemu.qemu_vm"):
            pytest.fail("ran under another play's lease")


def test_a_torn_lease_file_holds_nothing(paths):
    os.makedirs(paths.vm_state_dir)
    with open(paths.lock, "w", encoding="utf-8") as handle:
        handle.write('{"id": "move-1", "exp')
    assert _lock.current(paths) is None


def test_the_module_refuses_a_vm_another_play_holds_and_gives_back_only_its_own(tmp_path):
    dirs = {"name": "web1", "run_dir": str(tmp_path / "run")}
    taken = conftest.run_module("qemu_vm_lock", tmp_path, **dirs, lock_id="move-1", operation="migrate",
                                holder="alice@ctl1", ttl=600)
    assert taken["changed"] is True and taken["lock"]["holder"] == "alice@ctl1", taken
    refused = conftest.run_module("qemu_vm_lock", tmp_path, **dirs, lock_id="move-2")
    assert refused["failed"] is True and "locked on this host by migrate move-1 of alice@ctl1" in refused["msg"]
    checked = conftest.run_module("qemu_vm_lock", tmp_path, check_mode=True, **dirs, lock_id="move-2")
    assert checked["failed"] is True, "check mode says the same"
    not_ours = conftest.run_module("qemu_vm_lock", tmp_path, **dirs, lock_id="move-2", state="unlocked")
    assert not_ours["changed"] is False and not_ours["lock"]["id"] == "move-1"
    given = conftest.run_module("qemu_vm_lock", tmp_path, **dirs, lock_id="move-1", state="unlocked")
    assert given["changed"] is True and given["lock"] is None
    bad = conftest.run_module("qemu_vm_lock", tmp_path, **dirs, lock_id="move-3", ttl=0)
    assert bad["failed"] is True and "ttl must be a positive number of seconds" in bad["msg"]


def test_a_module_that_changes_the_vm_refuses_while_another_play_holds_it(tmp_path):
    dirs = {"name": "web1", "run_dir": str(tmp_path / "run")}
    conftest.run_module("qemu_vm_lock", tmp_path, **dirs, lock_id="move-1", operation="migrate", holder="alice")
    refused = conftest.run_module("qemu_vm", tmp_path, **dirs, state="absent")
    assert refused["failed"] is True and "locked on this host by migrate move-1 of alice" in refused["msg"], refused
    allowed = conftest.run_module("qemu_vm", tmp_path, **dirs, state="absent", lock_id="move-1")
    assert allowed.get("failed") is not True, allowed
    with open(os.path.join(tmp_path, "run", "web1", "lock.json"), encoding="utf-8") as handle:
        assert json.load(handle)["id"] == "move-1", "the play's lease stays until the play gives it back"


def test_a_play_run_works_under_the_lease_and_its_pid_is_busy_until_it_ends(paths):
    _lock.acquire(paths, "move-1", "migrate", "alice", 600)
    with _lock.held(paths, "move-1", "livemig.qemu.qemu_migrate"):
        assert _lock.current(paths)["pids"] == [os.getpid()]
        with pytest.raises(_lock.LockError) as refused:
            _lock.acquire(paths, "move-2", "migrate", "bob", 600, replace="move-1")
        assert f"its job (pid {os.getpid()}) still runs here" in str(refused.value)
        assert refused.value.details["busy"] == [os.getpid()]
    assert _lock.current(paths)["pids"] == []


def test_a_lease_to_replace_is_taken_over_once_no_run_works_under_it(paths):
    ended = subprocess.Popen(["true"])
    ended.wait()
    held = _lock.acquire(paths, "move-1", "migrate", "alice", 600, controller={"host": "ctl1", "pid": 1})
    with open(paths.lock, "w", encoding="utf-8") as handle:
        json.dump({**held, "pids": [ended.pid]}, handle)  # the job of a move that ended with its controller
    with pytest.raises(_lock.LockError):
        _lock.acquire(paths, "move-2", "migrate", "bob", 600, replace="move-0")
    taken = _lock.acquire(paths, "move-2", "migrate", "bob", 600, replace="move-1", controller={"host": "ctl2"})
    assert taken["id"] == "move-2" and taken["controller"] == {"host": "ctl2"} and taken["pids"] == []
