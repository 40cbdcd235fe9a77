# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One mover per VM on a host: a lease in the VM's state directory, `lock.json`.

Private to the livemig.qemu collection. A play takes the lease of a VM on every host it changes (qemu_vm_lock),
under the move's id, and gives it back at its end; every module that changes the VM checks it: the same id goes
on, another live one refuses at once and names its holder. A module run on its own takes a lease for the length
of its run. A lease ends when it is given back, when it expires (a play's lease: its controller may be gone), or
with its process (a single module run's). A play's lease names its controller process (`controller`) and the
module runs that work under it here (`pids`): a later play on the same controller machine may take over the lease
of a controller that has ended once none of those runs is left (`replace`). Reads and writes of the lease happen
under a short flock, so two controllers never both take it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._state import process_alive

RUN_TTL = 24 * 3600.0  # a single module run's lease lives with its process; this only bounds a reused pid
PLAY_TTL = 3600.0  # a lease a module takes for a play that did not take it first


class LockError(LivemigError):
    """Another live lease holds the VM on this host."""


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            lease = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a torn or foreign file holds nothing; the next lease replaces it
    return lease if isinstance(lease, dict) and lease.get("id") else None


def live(lease: dict[str, Any] | None, now: float | None = None) -> bool:
    """A lease holds while it has not expired, and a single module run's only while its process lives."""
    if not lease:
        return False
    if lease.get("pid") and not process_alive(lease["pid"]):
        return False
    return (now or time.time()) < float(lease.get("expires", 0))


def busy(lease: dict[str, Any] | None) -> list[int]:
    """The module runs that still work under the lease here (say the source-side job of a move)."""
    return [pid for pid in (lease or {}).get("pids") or [] if process_alive(pid)]


def describe(lease: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lease.get("acquired", 0)))
    until = time.strftime("%H:%M:%S UTC", time.gmtime(lease.get("expires", 0)))
    return (f"{lease.get('operation') or 'an operation'} {lease['id']} of {lease.get('holder') or 'an unknown holder'}"
            f", since {since}, until {until} at the latest")


@contextlib.contextmanager
def _guarded(paths: VMPaths) -> Iterator[None]:
    """An exclusive flock on the VM's state directory itself (no lock file to leave behind) while the lease is
    read and written."""
    _files.private_dir(paths.state_dir, paths.vm_state_dir)
    descriptor = os.open(paths.vm_state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def superseded(held: dict[str, Any], holding: str | None) -> bool:
    """A lease of a play that spans the host `holding`, whose lease the caller holds now: that play has ended (a play
    keeps its first host's lease to its end)."""
    return bool(holding) and holding in (held.get("hosts") or [])


def acquire(paths: VMPaths, lock_id: str, operation: str, holder: str, ttl: float, pid: int | None = None,
            hosts: list[str] | None = None, holding: str | None = None, controller: dict[str, Any] | None = None,
            replace: str | None = None) -> dict[str, Any]:
    """Take the lease (or extend ours); LockError naming the holder of another live one, unless that one is
    superseded through `holding`, or is `replace` and no module run works under it any more. `hosts`: every host the
    caller's play leases the VM on; `controller`: the identity of the caller's controller process."""
    with _guarded(paths):
        now = time.time()
        held = _read(paths.lock)
        if live(held, now) and held["id"] != lock_id and not superseded(held, holding) \
                and not (replace == held["id"] and not busy(held)):
            raise refusal(paths, held)
        lease = {"id": lock_id, "operation": operation, "holder": holder, "acquired": now, "expires": now + ttl,
                 "pid": pid, "hosts": hosts or [], "controller": controller, "pids": []}
        if held and held["id"] == lock_id:
            lease.update(acquired=held.get("acquired", now), expires=max(float(held.get("expires", 0)), now + ttl),
                         controller=controller or held.get("controller"), pids=busy(held))
        _files.atomic_write(paths.lock, json.dumps(lease, sort_keys=True))
        return lease


def refusal(paths: VMPaths, held: dict[str, Any]) -> LockError:
    running = busy(held)
    still = f"; its job (pid {', '.join(map(str, running))}) still runs here and ends by its own deadline" \
        if running else ""
    return LockError(f"VM {paths.vm} is locked on this host by {describe(held)}{still}: wait until it ends; if its "
                     f"controller is gone, end its lease with livemig_break_lock={held['id']} "
                     "(or qemu_vm_lock state=unlocked with that lock_id)",
                     details={"lock": held, "busy": running})


def _working(paths: VMPaths, lock_id: str, pid: int, working: bool) -> None:
    """Add this run's pid to the lease `lock_id` here, or take it away again."""
    with _guarded(paths):
        lease = _read(paths.lock)
        if not lease or lease["id"] != lock_id:
            return
        pids = [other for other in busy(lease) if other != pid] + ([pid] if working else [])
        _files.atomic_write(paths.lock, json.dumps({**lease, "pids": pids}, sort_keys=True))


def release(paths: VMPaths, lock_id: str) -> bool:
    """Give the lease `lock_id` back; False when the VM holds no lease of that id here."""
    if not os.path.isdir(paths.vm_state_dir):
        return False
    with _guarded(paths):
        held = _read(paths.lock)
        if not held or held["id"] != lock_id:
            return False
        _files.remove(paths.lock)
    _files.remove_empty_dirs(paths.vm_state_dir)  # a VM removed from this host leaves nothing behind
    return True


def current(paths: VMPaths) -> dict[str, Any] | None:
    """The live lease of the VM here, if any."""
    held = _read(paths.lock)
    return held if live(held) else None


@contextlib.contextmanager
def held(paths: VMPaths, lock_id: str | None, operation: str, give_back: bool = False) -> Iterator[None]:
    """Around a module run that changes the VM: the play's lease `lock_id` (taken for PLAY_TTL if it is not held
    yet, never extended; given back after a successful run when `give_back`), or a lease of this run's own, given back
    at its end."""
    if lock_id:
        ours = current(paths)
        if not (ours and ours["id"] == lock_id):
            acquire(paths, lock_id, operation, f"the play of lease {lock_id}", PLAY_TTL)
        _working(paths, lock_id, os.getpid(), True)
        try:
            yield
        finally:
            _working(paths, lock_id, os.getpid(), False)
        if give_back:  # reached only when the run succeeded
            release(paths, lock_id)
        return
    own = f"run-{secrets.token_hex(6)}"
    made = [path for path in (paths.state_dir, paths.vm_state_dir) if not os.path.isdir(path)]
    acquire(paths, own, operation, f"a single {operation} run (pid {os.getpid()})", RUN_TTL, pid=os.getpid())
    try:
        yield
    finally:
        release(paths, own)
        _files.remove_empty_dirs(*reversed(made))  # a run that created nothing leaves no directory either


def run(task: Any) -> dict[str, Any]:
    """The qemu_vm_lock module: take or give back the VM's lease on this host."""
    params, paths = task.params, task.paths
    lock_id, held = params["lock_id"], current(paths)
    if params["state"] == "unlocked":
        if not held or held["id"] != lock_id:
            return {"changed": False, "lock": held}
        if not task.check_mode:
            release(paths, lock_id)
        return {"changed": True, "lock": None}
    if params["ttl"] <= 0:
        raise LivemigError(f"ttl must be a positive number of seconds, not {params['ttl']}")
    replaceable = held and params["replace"] == held["id"] and not busy(held)
    if task.check_mode:
        if held and held["id"] != lock_id and not superseded(held, params["holding"]) and not replaceable:
            raise refusal(paths, held)
        return {"changed": True, "lock": held}
    lease = acquire(paths, lock_id, params["operation"], params["holder"], params["ttl"], hosts=params["hosts"],
                    holding=params["holding"], controller=params["controller"], replace=params["replace"])
    result = {"changed": not (held and held["id"] == lock_id and held["expires"] == lease["expires"]), "lock": lease}
    if held and held["id"] != lock_id:
        result["replaced"] = held  # a lease of a play that ended (superseded, or its controller gone)
    return result
