"""Make tests/unit/recordings/*.json again: `.venv/bin/python tests/unit/qemu/record_exchanges.py [-k NAME]`.

Each record_* function runs one real migration with this machine's QEMU (TCG), between a running source and an
incoming target started by the `pair` fixture of test_migration.py, through replay.Recorder on the source's
session, and saves the exchange with the settings and what the migration came to. It then replays the recording
once: the replay must come to the same outcome. This file runs under pytest for the fixtures; the unit test run
does not collect it (its name does not start with test_).
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/unit, run as a script
import conftest  # noqa: E402,F401 pylint: disable=unused-import,wrong-import-position  # the collection importable
from replay import (  # noqa: E402 pylint: disable=wrong-import-position
    RECORDINGS, Recorder, load, migrate, outcome, replay_migration)
from test_migration import (  # noqa: E402,F401 pylint: disable=unused-import,wrong-import-position
    AFTER_READY, CAP, FAST_POLICY, NODE, pair)
from test_postcopy import when_status  # noqa: E402 pylint: disable=wrong-import-position

from ansible_collections.livemig.qemu.plugins.module_utils._migration import (  # noqa: E402 pylint: disable=wrong-import-position
    MigrationFailed)


class KillTargetBeforeContinue(Recorder):
    """The target dies just before migrate-continue: after the mirrors are finished, before the device state."""

    def __init__(self, session, target, **header):
        super().__init__(session, **header)
        self.target = target

    def execute(self, command, arguments=None, timeout=None):
        if command == "migrate-continue":
            self.target.kill()
        return super().execute(command, arguments, timeout)


def record(name, vms, description, recorder=Recorder, **settings):
    """Migrate with these settings through a recorder, save the recording, check that its replay agrees."""
    qemu = vms.src.execute("query-version")["qemu"]
    made_by = f"tests/unit/record_exchanges.py::record_{name.replace('-', '_')}"
    session = recorder(vms.src, description=description, made_by=made_by,
                       qemu=f"{qemu['major']}.{qemu['minor']}.{qemu['micro']} (TCG)", settings=settings)
    result = migrate(session, settings)
    session.save(os.path.join(RECORDINGS, f"{name}.json"), outcome=outcome(result))
    with pytest.MonkeyPatch.context() as patch:
        replayed, unused_session = replay_migration(load(name), patch)
    assert outcome(replayed) == outcome(result)
    return result


def hmp_write(vms, pattern, offset, length):
    vms.src.execute("human-monitor-command", {"command-line": "qemu-io -d /machine/peripheral/vd-root/virtio-backend "
                                              f'"write -P {pattern} {offset} {length}"'})


def record_completes(pair):  # noqa: F811
    vms = pair(disk=False)
    vms.src.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "pause-before-switchover", "state": True}]})  # left on by an earlier run
    stats = record("completes", vms, "32 MiB of random RAM, no disk, unlimited bandwidth: pre-copy completes; "
                   "pause-before-switchover, left on before, is switched off", uri=vms.uri, sample_interval=0.2)
    assert stats["status"] == "completed"


def record_mirror(pair):  # noqa: F811
    vms = pair()
    hmp_write(vms, *AFTER_READY)  # written after the mirror is READY: the switchover must finish the mirror
    stats = record("mirror", vms, "a 64 MiB qcow2 disk mirrored over NBD (READY before the start), 32 MiB of random "
                   "RAM: paused at pre-switchover, the mirror finished, migrate-continue, completed",
                   uri=vms.uri, mirrored_nodes=[NODE], sample_interval=0.2)
    assert stats["status"] == "completed" and stats["mirror_processed_bytes"] > 0


def record_stalled(pair):  # noqa: F811
    vms = pair(disk=False, guest=8)
    failure = record("stalled", vms, "a boot-sector guest dirtying 8 MiB over and over, max_bandwidth 16 MiB/s, "
                     "auto policy with a fast clock: downtime limit 100 -> 200 -> 300 ms, then abort; cancelled, the "
                     "source keeps running", uri=vms.uri, max_bandwidth=CAP, downtime_limit_ms=300,
                     sample_interval=0.2, policy_overrides=FAST_POLICY)
    assert isinstance(failure, MigrationFailed) and failure.phase == "pre-copy" and failure.source_running


def record_switchover_timeout(pair):  # noqa: F811
    vms = pair()
    failure = record("switchover-timeout", vms, "a mirrored disk and switchover_timeout 0: at pre-switchover the "
                     "mirror cannot finish in time; rolled back before the device state: migrate_cancel, the NBD "
                     "node removed, cont", uri=vms.uri, mirrored_nodes=[NODE], sample_interval=0.2,
                     switchover_timeout=0)
    assert isinstance(failure, MigrationFailed) and failure.phase == "switchover" and failure.source_running


def record_target_lost_after_continue(pair):  # noqa: F811
    vms = pair()
    failure = record("target-lost-after-continue", vms, "a mirrored disk; the target QEMU is killed just before "
                     "migrate-continue (the mirror finished): the migration fails after the device state may have "
                     "left, QEMU restarts the source itself, nothing is resumed or cancelled",
                     recorder=lambda session, **header: KillTargetBeforeContinue(session, vms.target, **header),
                     uri=vms.uri, mirrored_nodes=[NODE], sample_interval=0.2)
    assert isinstance(failure, MigrationFailed) and failure.phase == "switchover"


def record_postcopy_target_lost(pair):  # noqa: F811
    vms = pair(disk=False, guest=8, target_capabilities=["postcopy-ram"], source_monitor=True)
    watcher = when_status(vms.monitor, "postcopy-active", vms.target.kill)
    try:
        failure = record("postcopy-target-lost", vms, "a dirtying guest, postcopy-early, post-copy at 256 KiB/s; the "
                         "target QEMU is killed once the migration is postcopy-active (seen on a second monitor): "
                         "postcopy-paused, the source stays stopped", uri=vms.uri, max_bandwidth=CAP,
                         convergence="postcopy-early", capabilities=["postcopy-ram"],
                         parameters={"max-postcopy-bandwidth": 256 * 1024}, sample_interval=0.2)
    finally:
        watcher.thread.join(30)
    assert not watcher.problems and watcher.seen
    assert isinstance(failure, MigrationFailed) and failure.phase == "post-copy" and not failure.source_running


if __name__ == "__main__":
    sys.exit(pytest.main([os.path.abspath(__file__), "-q", "-p", "no:cacheprovider", "-o", "python_functions=record_*",
                          *sys.argv[1:]]))
