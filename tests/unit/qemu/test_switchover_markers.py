"""The durable markers of a move against real QEMUs: the source's phase, the target's ran marker and `-S`, and the
target's abort step that decides a rollback. Two "hosts" are two directory sets on this machine; the migration goes
over 127.0.0.1."""
from __future__ import annotations

import os

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record, process_alive
from ansible_collections.livemig.qemu.plugins.module_utils._vmhost import kill_qemu

SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg"}
MOVE = "move-1"


class Hosts:
    """A source host with the VM running and a target host waiting for it, both on this machine."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.dirs = {side: {"run_dir": str(tmp_path / side / "run"), "image_dir": str(tmp_path / side / "images")}
                     for side in ("src", "dst")}
        self.paths = {side: VMPaths.on_host("vm1", **dirs) for side, dirs in self.dirs.items()}
        self.uri = None

    def module(self, name, side, **args):
        return conftest.run_module(name, self.tmp, name="vm1", **self.dirs[side], **args)

    def record(self, side):
        paths = self.paths[side]
        return load_record(paths.record, paths.vm)

    def status(self, side):
        with QMPSession(self.paths[side].qmp) as session:
            return session.execute("query-status")["status"]

    def start(self):
        started = self.module("qemu_vm", "src", spec=SPEC, claim=True)
        assert started["status"] == "running", started
        target = self.module("qemu_vm", "dst", state="incoming", spec=SPEC, migration_target=True,
                             migration_id=MOVE, machine=started["machine"], accel="tcg")
        assert target["status"] == "inmigrate", target
        listening = self.module("qemu_migrate_incoming", "dst", address="127.0.0.1")
        self.uri = listening["uri"]
        return self

    def migrate(self, **args):
        return self.module("qemu_migrate", "src", uri=self.uri, target_name="hv2", migration_id=MOVE, **args)

    def remove(self):
        for side in ("dst", "src"):
            self.module("qemu_vm", side, state="absent")


@pytest.fixture
def hosts(tmp_path):
    if conftest.QEMU is None:
        pytest.fail("qemu-system-x86_64 is missing: run scripts/setup.sh")
    made = Hosts(tmp_path)
    yield made.start()
    made.remove()


def test_the_target_stays_paused_until_its_watcher_has_marked_that_the_vm_runs_there(hosts):
    migrated = hosts.migrate()
    assert migrated["changed"] is True and migrated["migration_id"] == MOVE, migrated
    assert hosts.status("dst") == "paused"  # -S: delivered, but not running before the marker
    assert "ran" not in hosts.record("dst").migration
    source = hosts.record("src")
    assert source.owner is False and source.migration["phase"] == "completed" and source.migration["peer"] == "hv2"

    watched = hosts.module("qemu_migrate_incoming", "dst", state="completed", timeout=30)
    assert watched["changed"] is True and watched["status"] == "running" and watched["resume_time"], watched
    target = hosts.record("dst")
    assert target.migration["id"] == MOVE and target.migration["ran"] <= watched["resume_time"]
    assert hosts.status("dst") == "running"

    aborted = hosts.module("qemu_migrate_incoming", "dst", state="aborted", migration_id=MOVE)
    assert aborted["ran"] is True and aborted["changed"] is False and aborted["running"] is True, aborted
    assert hosts.status("dst") == "running"


def test_a_target_that_never_ran_the_vm_is_ended_by_the_abort(hosts):
    pid = hosts.record("dst").pid
    aborted = hosts.module("qemu_migrate_incoming", "dst", state="aborted", migration_id=MOVE)
    assert aborted["ran"] is False and aborted["killed"] is True and aborted["changed"] is True, aborted
    assert not process_alive(pid)
    assert "ran" not in hosts.record("dst").migration and hosts.record("dst").owner is False


def test_the_abort_in_check_mode_ends_nothing(hosts):
    pid = hosts.record("dst").pid
    aborted = conftest.run_module("qemu_migrate_incoming", hosts.tmp, check_mode=True, name="vm1",
                                  **hosts.dirs["dst"], state="aborted", migration_id=MOVE)
    assert aborted["ran"] is False and aborted["changed"] is True and "killed" not in aborted, aborted
    assert process_alive(pid)


def test_a_target_that_ran_and_died_keeps_its_disks_and_takes_the_vm(hosts):
    hosts.migrate()
    hosts.module("qemu_migrate_incoming", "dst", state="completed", timeout=30)
    kill_qemu(hosts.record("dst").pid)
    aborted = hosts.module("qemu_migrate_incoming", "dst", state="aborted", migration_id=MOVE)
    assert aborted["ran"] is True and aborted["took_ownership"] is True and aborted["running"] is False, aborted
    assert hosts.record("dst").owner is True


def test_the_abort_leaves_a_record_of_another_move_alone(hosts):
    pid = hosts.record("dst").pid
    aborted = hosts.module("qemu_migrate_incoming", "dst", state="aborted", migration_id="another-move")
    assert aborted["ran"] is None and aborted["changed"] is False and "another move" in aborted["msg"], aborted
    assert process_alive(pid)


def test_a_target_that_arrived_while_no_watcher_ran_is_let_run_when_it_is_claimed(hosts):
    hosts.migrate()
    assert hosts.status("dst") == "paused"
    claimed = hosts.module("qemu_vm", "dst", spec=SPEC, migration_target=True)
    assert claimed["changed"] is True and claimed["owner"] is True and claimed["status"] == "running", claimed
    target = hosts.record("dst")
    assert target.owner is True and "ran" in target.migration and "incoming" not in target.volatile


def test_the_target_stops_its_nbd_server_when_it_takes_the_vm_over(hosts):
    """The watcher closes the exports when it lets the VM run; a VM that arrived while none ran still has them when
    the hand-over claims it: an owner's disks take no writes from outside."""
    exported = hosts.module("qemu_nbd_export", "dst", address="127.0.0.1", disks=[])
    assert exported["changed"] is True and "nbd" in hosts.record("dst").volatile, exported
    hosts.migrate()
    claimed = hosts.module("qemu_vm", "dst", spec=SPEC, migration_target=True)
    assert claimed["changed"] is True and claimed["owner"] is True, claimed
    assert "nbd" not in hosts.record("dst").volatile
    with QMPSession(hosts.paths["dst"].qmp) as session:
        assert session.execute("query-block-exports") == []
        # It was stopped: a new one may start.
        session.execute("nbd-server-start", {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}}})


def test_a_rollback_of_a_completed_migration_resumes_the_source_and_owns_it_again(hosts):
    """Only the caller, who ended the target and found no ran marker, may say target_ran=false."""
    hosts.migrate()
    hosts.module("qemu_migrate_incoming", "dst", state="aborted", migration_id=MOVE)
    assert hosts.status("src") == "postmigrate"
    cancelled = hosts.module("qemu_migrate", "src", state="cancelled", target_ran=False)
    assert cancelled["changed"] is True and cancelled["resumed"] is True, cancelled
    assert hosts.status("src") == "running"
    source = hosts.record("src")
    assert source.owner is True and source.handed_over_to is None and source.migration["phase"] == "rolled-back"


def test_a_migration_that_fails_before_the_switchover_is_marked_rolled_back(hosts):
    hosts.uri = "tcp:127.0.0.1:1"  # nobody listens there
    failed = hosts.migrate(timeout=20)
    assert failed["failed"] is True and failed["target_may_have_run"] is False, failed
    assert hosts.status("src") == "running"
    source = hosts.record("src")
    assert source.owner is True and source.migration == {**source.migration, "id": MOVE, "role": "source",
                                                         "phase": "rolled-back"}
    assert os.path.exists(hosts.paths["src"].record)
