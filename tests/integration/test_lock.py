"""One mover per VM: the VM's lease on each host lets exactly one of two plays move it or start it."""
from __future__ import annotations

import json
import os
import threading
import time

from conftest import SMALL_DISK_MB, lab_path, wait_until

LOCKED = "is locked on this host by"


def lease_files(name: str) -> list[str]:
    paths = (os.path.join(lab_path(host, "state", name), "lock.json") for host in ("hv1", "hv2"))
    return [path for path in paths if os.path.exists(path)]


def in_background(play) -> dict:
    """Run `play()` in a thread; the dict gets its result and when it ended."""
    outcome: dict = {}

    def run():
        outcome["started"] = time.monotonic()
        outcome["result"] = play()
        outcome["ended"] = time.monotonic()

    outcome["thread"] = threading.Thread(target=run, daemon=True)
    outcome["thread"].start()
    return outcome


def test_two_migrate_runs_of_one_vm_started_together_move_it_once(lab, vm):
    name = vm("light")
    lab.start(name, "hv1", prefill=False)
    runs = [in_background(lambda: lab.migrate(name, "hv1", "hv2")), in_background(lambda: lab.migrate(name, "hv1", "hv2"))]
    for run in runs:
        run["thread"].join(timeout=900)
    results = [run["result"] for run in runs]
    moved = [run for run in runs if not run["result"].failed]
    refused = [run for run in runs if run["result"].failed]
    assert len(moved) == 1 and len(refused) == 1, [result.output[-3000:] for result in results]
    loser = refused[0]
    assert LOCKED in loser["result"].output and "migrate from hv1 to hv2" in loser["result"].output, \
        loser["result"].output
    print(f"the refused run ended {loser['ended'] - loser['started']:.1f}s after it started")
    assert loser["ended"] < moved[0]["ended"], "the refusal must not wait for the move"
    # The refused run touched nothing: the VM runs on hv2 only, owned there, and no lease is left.
    assert lab.pid("hv1", name) is None and lab.record("hv1", name) is None
    assert lab.qmp("hv2", name, "query-status")["status"] == "running" and lab.record("hv2", name)["owner"] is True
    assert lease_files(name) == []


def test_start_refuses_while_a_migration_holds_the_vm(lab, vm):
    name = vm("light", disk_mb=SMALL_DISK_MB)
    lab.start(name, "hv1", prefill=False)
    move = in_background(lambda: lab.migrate(name, "hv1", "hv2", livemig_max_bandwidth=32 * 1024 * 1024))
    wait_until(lambda: lab.pid("hv2", name) is not None, 120, "the target QEMU to start")
    started = lab.play("start", livemig_vm=name, livemig_host="hv2")
    assert started.failed and LOCKED in started.output and "migrate from hv1 to hv2" in started.output, \
        started.output
    move["thread"].join(timeout=900)
    assert not move["result"].failed, move["result"].output
    assert lab.record("hv2", name)["owner"] is True and lease_files(name) == []


def test_a_lease_of_another_controllers_play_refuses_until_it_is_broken(lab, vm):
    """Whether a play of another controller machine still runs, this one cannot tell: it refuses, naming the lease,
    until the user breaks it."""
    name = vm("light")
    lab.start(name, "hv1", prefill=False)
    taken = lab.module("hv1", "qemu_vm_lock", name=name, **lab.host_dirs("hv1"), lock_id="dead-play",
                       operation="migrate from hv1 to hv2", holder="someone@gone", ttl=3600)
    assert taken["changed"] is True, taken
    lease_file = lease_files(name)[0]
    with open(lease_file, encoding="utf-8") as handle:
        lease = json.load(handle)
    with open(lease_file, "w", encoding="utf-8") as handle:
        json.dump({**lease, "controller": {**lease["controller"], "host": "controller-elsewhere"}}, handle)
    refused = lab.migrate(name, "hv1", "hv2")
    assert refused.failed and f"{LOCKED} migrate from hv1 to hv2 dead-play of someone@gone" in refused.output, \
        refused.output
    assert "livemig_break_lock=dead-play" in refused.output
    assert lab.pid("hv2", name) is None and lab.qmp("hv1", name, "query-status")["status"] == "running"
    moved = lab.migrate(name, "hv1", "hv2", livemig_break_lock="dead-play")
    assert not moved.failed, moved.output
    assert lease_files(name) == []
