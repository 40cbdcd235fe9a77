# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-host record of a VM: ownership and pinned ABI, plus this host's volatile keys.

Private to the livemig.qemu collection. Each host keeps its own record; nothing
in it is ever copied to another host. `owner` says which host the VM belongs to;
`volatile` holds what only makes sense on this host (pid, sockets, ports).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths


@dataclass
class HostRecord:
    vm: str
    owner: bool = False
    machine: str | None = None
    accel: str | None = None
    handed_over_to: str | None = None
    volatile: dict[str, Any] = field(default_factory=dict)
    # The move this host last took part in: {id, role (source|target), peer, phase (source), ran (target: when the
    # VM first ran here, written before the target QEMU is let run)}. Durable, so a rollback can trust it.
    migration: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.volatile.get("pid")


def load_record(path: str, vm: str) -> HostRecord | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    keys = ("owner", "machine", "accel", "handed_over_to", "volatile", "migration")
    known = {key: data[key] for key in keys if key in data}
    return HostRecord(vm=vm, **known)


def save_record(path: str, record: HostRecord) -> None:
    """Write atomically: a crash leaves the old record or the new one, never half of one."""
    _files.private_dir(os.path.dirname(path))
    _files.atomic_write(path, json.dumps(asdict(record), indent=2, sort_keys=True))


@contextlib.contextmanager
def updating(path: str, vm: str) -> Iterator[HostRecord]:
    """Read, change and write the record under an exclusive lock, so that two processes changing one record (the
    target's resume watcher and the hand-over) never lose each other's change. The lock is a flock on the record's
    directory (the VM's own), so no lock file is left behind."""
    directory = os.path.dirname(path)
    _files.private_dir(directory)
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        record = load_record(path, vm) or HostRecord(vm=vm)
        yield record
        save_record(path, record)
    finally:
        os.close(descriptor)


def mark_source(path: str, vm: str, migration_id: str, peer: str | None, phase: str) -> None:
    """The source's progress through a move, durable before the step it names is taken."""
    with updating(path, vm) as record:
        if record.migration.get("id") != migration_id:
            record.migration = {"id": migration_id, "role": "source", "peer": peer}
        record.migration.update(phase=phase, at=time.time())


def mark_ran(path: str, vm: str, forget: tuple[str, ...] = ()) -> None:
    """The target is about to let the VM run: from now on the source must never run it again. `forget`: volatile
    keys that end with this step."""
    with updating(path, vm) as record:
        record.migration.setdefault("ran", time.time())
        for key in forget:
            record.volatile.pop(key, None)


def ran_here(record: HostRecord | None, migration_id: str | None = None) -> bool:
    """Whether the VM ran on this host in the move `migration_id` (any move when None), or this host owns it."""
    if record is None:
        return False
    same_move = migration_id is None or record.migration.get("id") == migration_id
    return record.owner or (same_move and "ran" in record.migration)


def remove_record(path: str) -> bool:
    return _files.remove(path)


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def qemu_pid(pidfile: str, qmp: str) -> int | None:
    """The pid in `pidfile` if that process lives and is the QEMU of the monitor `qmp` (its command line names it)."""
    try:
        with open(pidfile, encoding="ascii") as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    if not process_alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().decode(errors="replace")
    except OSError:
        return None
    return pid if qmp in cmdline else None


class LegacyLayoutError(LivemigError):
    """A QEMU started by livemig.qemu 0.3 runs the VM: its files are where this version does not look."""


def adopt_legacy(paths: VMPaths) -> None:
    """Take over a VM that livemig.qemu 0.3 left: with no record in the VM's directory but one at the old place
    (`<state_dir>/<vm>.json`), move that record, and the VM's state file, into the VM's directory. Refused while a
    QEMU of the old layout runs the VM: no module of this version could reach it."""
    old = paths.legacy
    if os.path.exists(paths.record):
        return
    pid = qemu_pid(old.pidfile, old.qmp)
    if pid:
        raise LegacyLayoutError(f"VM {paths.vm} runs under the file layout of livemig.qemu 0.3 ({old.qmp}): stop it "
                                f"with that version, or end its QEMU (pid {pid}) yourself; the next run then moves "
                                f"its record into {paths.vm_state_dir}")
    if not os.path.exists(old.record):
        return
    _files.private_dir(paths.state_dir, paths.vm_state_dir)
    for there, here in ((old.record, paths.record), (old.state_file, paths.state_file)):
        if os.path.exists(there):
            os.replace(there, here)
    _files.fsync(paths.state_dir, directory=True)
    _files.fsync(paths.vm_state_dir, directory=True)
