"""qemu_state_transfer against a real QEMU and real qemu-nbd receivers on 127.0.0.1: the source's job of a stateful
move never leaves the VM paused, whether the commit comes, comes too late, or the copy fails."""
from __future__ import annotations

import os
import threading
import time

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record

SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg",
        "disks": [{"name": "root", "size_mb": 8, "format": "qcow2"}]}
MOVE = "move-1"


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Move:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.src = {"name": "vm1", "run_dir": str(tmp_path / "src")}
        self.dst = {"name": "vm1", "run_dir": str(tmp_path / "dst")}
        self.paths = VMPaths.on_host("vm1", self.src["run_dir"])
        self.receiver_paths = {"root": str(tmp_path / "dst" / "vm1-root.qcow2"),
                               "state": str(tmp_path / "dst" / "received.state")}

    def module(self, name, where, **args):
        return conftest.run_module(name, self.tmp, **where, **args)

    def status(self):
        with QMPSession(self.paths.qmp) as session:
            return session.execute("query-status")["status"]

    def phase(self):
        return load_record(self.paths.record, "vm1").migration.get("phase")

    def receivers(self):
        root = self.module("qemu_nbd_copy", self.dst, label="root", path=self.receiver_paths["root"],
                           format="qcow2", size=8 << 20, address="127.0.0.1", state="listening")
        state = self.module("qemu_nbd_copy", self.dst, label="state", path=self.receiver_paths["state"],
                            format="raw", size=(32 + 256) << 20, address="127.0.0.1", state="listening")
        assert "uri" in root and "uri" in state, (root, state)
        return root, state

    def transfer(self, root, state_uri, commit_timeout):
        """Start the source's job in the background; the dict gets its result."""
        outcome: dict = {}
        copies = [{"src": self.paths.disk(type("Disk", (), {"name": "root", "format": "qcow2", "shared": False,
                                                            "path": None})), "format": "qcow2",
                   "uri": root["uri"], "target_is_zero": True}]

        def run():
            outcome["result"] = self.module("qemu_state_transfer", self.src, migration_id=MOVE, target_name="hv2",
                                            copies=copies, state_uri=state_uri, timeout=60,
                                            commit_timeout=commit_timeout)

        outcome["thread"] = threading.Thread(target=run, daemon=True)
        outcome["thread"].start()
        return outcome

    def finish_receivers(self):
        for label in ("root", "state"):
            done = self.module("qemu_nbd_copy", self.dst, label=label, state="finished", timeout=60)
            assert done.get("failed") is not True, done


@pytest.fixture
def move(tmp_path):
    made = Move(tmp_path)
    started = made.module("qemu_vm", made.src, spec=SPEC, claim=True)
    assert started["status"] == "running", started
    yield made
    made.module("qemu_vm", made.src, state="absent")
    for label, path in made.receiver_paths.items():
        made.module("qemu_nbd_copy", made.dst, label=label, path=path, state="absent")


def test_with_the_commit_the_source_stays_paused_and_the_target_has_everything(move):
    root, state = move.receivers()
    job = move.transfer(root, state["uri"], commit_timeout=60)
    move.finish_receivers()
    early = move.module("qemu_state_transfer", move.src, migration_id=MOVE, state="committed") \
        if move.phase() == "started" else None
    assert early is None or "the job has not sent everything yet" in early["msg"], early
    wait_until(lambda: move.phase() == "sent", 30, "the job to have sent everything")
    committed = move.module("qemu_state_transfer", move.src, migration_id=MOVE, state="committed")
    assert committed["changed"] is True and committed["phase"] == "switchover", committed
    job["thread"].join(timeout=60)
    result = job["result"]
    assert result.get("failed") is not True and result["phase"] == "switchover", result
    assert [os.path.basename(copy["src"]) for copy in result["copies"]] == ["vm1-root.qcow2", "state"]
    assert result["saved"]["size"] > 0 and os.path.getsize(move.receiver_paths["state"]) >= result["saved"]["size"]
    assert move.status() == "postmigrate" and move.phase() == "switchover"
    again = move.module("qemu_state_transfer", move.src, migration_id=MOVE, state="committed")
    assert again["changed"] is False, again


def test_without_the_commit_in_time_the_source_resumes_by_itself(move):
    root, state = move.receivers()
    job = move.transfer(root, state["uri"], commit_timeout=1)
    move.finish_receivers()
    job["thread"].join(timeout=60)
    result = job["result"]
    assert result["failed"] is True and result["source_running"] is True, result
    assert "the target did not take the VM over within 1s of the copy; the VM was resumed here" in result["msg"]
    assert move.status() == "running" and move.phase() == "rolled-back"
    late = move.module("qemu_state_transfer", move.src, migration_id=MOVE, state="committed")
    assert late["failed"] is True and "it resumed on this host already" in late["msg"], late


def test_a_copy_that_fails_resumes_the_source(move):
    root, unused_state = move.receivers()
    job = move.transfer(root, "nbd://127.0.0.1:1/nobody", commit_timeout=60)
    job["thread"].join(timeout=60)
    result = job["result"]
    assert result["failed"] is True and result["source_running"] is True, result
    assert "sending to the target failed" in result["msg"] and "the VM was resumed here" in result["msg"]
    assert move.status() == "running" and move.phase() == "rolled-back"
