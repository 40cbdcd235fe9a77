# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Save a VM's state to a file and load it into a QEMU started with `-incoming defer`.

Private to the livemig.qemu collection. The stateful path's QMP primitive: the VM is
stopped first, so the file holds one consistent pass of RAM and device state. The
stream goes to `<path>.partial` and is renamed to `<path>` only once it is complete
and on disk: a file at `<path>` is always a whole state.
"""
from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files, _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import (
    ACTIVE, UNLIMITED_BANDWIDTH, cancel, check_request, resume_if_paused, run_state, set_capabilities, settled_state,
    undo, with_notes)
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession, event_time
from ansible_collections.livemig.qemu.plugins.module_utils._schema import schema_features

STOP_TIMEOUT = 10.0
SETTLE_TIMEOUT = 10.0
POLL = 0.2  # seconds between query-migrate checks while waiting for events: notices a QEMU that went away
ENDED = ("completed", "failed", "cancelled")


class StateFileError(LivemigError):
    """Saving or loading the state failed. `vm_running`: whether the VM runs on this QEMU afterwards."""

    def __init__(self, message: str, vm_running: bool | None = None):
        super().__init__(message, details={"vm_running": vm_running})
        self.vm_running = vm_running


def partial_path(path: str) -> str:
    return f"{path}.partial"


# -- what this QEMU can do ------------------------------------------------------------------

def supports_file_uri(session: QMPSession) -> bool:
    """Whether this QEMU migrates to and from `file:` (QEMU 8.2 and later), by its schema, not its version."""
    return schema_features(session)["file"]


def state_transports(session: QMPSession) -> list[str]:
    """The transports this QEMU can save and load a VM state file with."""
    return ["exec", "file"] if supports_file_uri(session) else ["exec"]


# -- helpers ---------------------------------------------------------------------------------

def _file_channel(path: str) -> list[dict[str, Any]]:
    """A `file:` address as a channel: QEMU takes the filename as is (in a URI, `,offset=` would be parsed)."""
    return [{"channel-type": "main", "addr": {"transport": "file", "filename": path, "offset": 0}}]


def _wait_migration(session: QMPSession, events: Any, deadline: float, seen: dict[str, float]) -> str:
    """The status that ended the migration; `seen` gets the time of the first event of each name."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StateFileError("the state transfer did not complete in time")
        event = events.get(min(POLL, remaining))
        if event is not None:
            name = event["event"]
            status = event["data"]["status"] if name == "MIGRATION" else None
            seen.setdefault(f"{name} {status}" if status else name, event_time(event))
            if status in ENDED:
                return status
            continue
        info = session.execute("query-migrate")  # raises when QEMU has gone away
        if info.get("status") in ENDED:
            seen.setdefault(f"MIGRATION {info['status']}", time.time())
            return info["status"]


def _wait_released(session: QMPSession, deadline: float) -> None:
    """Wait until QEMU has closed the migration stream (and reaped an exec: writer): its yank instance goes last."""
    while {"type": "migration"} in session.execute("query-yank"):
        if time.monotonic() > deadline:
            raise StateFileError("QEMU did not close the migration stream in time")
        time.sleep(0.01)


def _failure(session: QMPSession, status: str) -> StateFileError:
    error = session.execute("query-migrate").get("error-desc") or "QEMU gave no reason"
    return StateFileError(f"QEMU reports the migration {status}: {error}")


# -- save ------------------------------------------------------------------------------------

def save_state(session: QMPSession, path: str, timeout: float) -> dict[str, Any]:
    """Stop the VM and stream its state into `path`; the VM stays paused (postmigrate) on success.

    On failure the migration is cancelled, the partial file removed and the VM resumed if it ran.
    """
    status = session.execute("query-status")["status"]
    migration = session.execute("query-migrate").get("status")
    if migration in ACTIVE:
        raise StateFileError(f"a migration is already {migration} on this VM", status == "running")
    if status in ("inmigrate", "postmigrate", "finish-migrate"):
        raise StateFileError(f"the VM is {status}: there is no state of its own here to save", False)
    was_running = status == "running"
    partial = partial_path(path)
    _files.remove(path, partial)  # a state file of this VM from before is stale now
    try:
        # Created here, mode 0600 (the guest's RAM goes in it): a bad directory fails before the VM is stopped.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except OSError as exc:
        raise StateFileError(f"cannot create the state file {partial}: {exc.strerror}", was_running) from exc
    transport = "file" if supports_file_uri(session) else "exec"
    deadline = time.monotonic() + timeout
    seen: dict[str, float] = {}
    with session.subscribe(("STOP", "MIGRATION")) as events:
        try:
            if was_running:
                session.execute("stop")
                seen["STOP"] = event_time(events.wait(lambda event: event["event"] == "STOP",
                                                      time.monotonic() + STOP_TIMEOUT, "the VM to stop"))
            set_capabilities(session, ["events"])  # a state file carries no post-copy or multifd
            # QEMU refuses TLS on a file, and a VM that was the target of a TLS move has its credentials set.
            session.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED_BANDWIDTH, **_tlsqemu.CLEARTEXT})
            if transport == "file":
                session.execute("migrate", {"channels": _file_channel(partial)})
            else:
                # cat renames the file once it has written all of it, so a file at `path` is always whole.
                quoted = shlex.quote(partial)
                session.execute("migrate", {"uri": f"exec:cat > {quoted} && mv -f {quoted} {shlex.quote(path)}"})
            if (end := _wait_migration(session, events, deadline, seen)) != "completed":
                raise _failure(session, end)
            _finish_file(session, partial, path, transport, deadline)
        except (QMPError, StateFileError, OSError) as exc:
            raise _rollback(session, exc, path, was_running) from exc
    return {"size": os.path.getsize(path), "transport": transport, "was_running": was_running,
            "stop_time": seen.get("STOP"), "completed_time": seen["MIGRATION completed"],
            "total_time_ms": session.execute("query-migrate").get("total-time"),
            "status": settled_state(session, "finish-migrate")}


def _finish_file(session: QMPSession, partial: str, path: str, transport: str, deadline: float) -> None:
    """Make the complete stream `path`, on disk. QEMU reports `completed` before it closes the stream."""
    _wait_released(session, max(deadline, time.monotonic() + SETTLE_TIMEOUT))
    if transport == "file":
        _files.fsync(partial)
        os.replace(partial, path)
    elif os.path.exists(partial) or not os.path.exists(path):
        raise StateFileError("QEMU completed, but cat did not write the whole state file (see QEMU's log)")
    _files.fsync(path)
    _files.fsync(os.path.dirname(path), directory=True)


def _rollback(session: QMPSession, failure: Exception, path: str, was_running: bool) -> StateFileError:
    notes = undo((("cancel migration", lambda: cancel(session)),
                  ("close stream", lambda: _wait_released(session, time.monotonic() + SETTLE_TIMEOUT)),
                  ("resume VM", lambda: was_running and resume_if_paused(session))))
    try:
        _files.remove(partial_path(path), path)
    except OSError as exc:
        notes.append(f"remove partial file: {exc}")
    return StateFileError(f"saving the VM state to {path} failed: {with_notes(str(failure), notes)}",
                          run_state(session) == "running")


# -- restore ---------------------------------------------------------------------------------

def restore_state(session: QMPSession, path: str, timeout: float, resume: bool = True,
                  parameters: dict[str, Any] | None = None,
                  before_resume: Callable[[], None] | None = None) -> dict[str, Any]:
    """Load `path` into this QEMU (started with -incoming defer), with migration `parameters` set first; then, when
    `resume`, call `before_resume` (the target's ran marker) and `cont`.

    On failure this QEMU holds no usable VM: the caller removes it.
    """
    status = session.execute("query-status")["status"]
    if status != "inmigrate":
        raise StateFileError(f"QEMU is {status}, not waiting for an incoming migration "
                             "(start it with -incoming defer)", status == "running")
    migration = session.execute("query-migrate").get("status")
    if migration not in (None, "none"):
        raise StateFileError(f"an incoming migration was already started on this QEMU ({migration})", False)
    if not os.path.isfile(path):
        raise StateFileError(f"the state file {path} does not exist (or is not a regular file)", False)
    if os.path.getsize(path) == 0:
        raise StateFileError(f"the state file {path} is empty", False)
    parameters = check_request(session, [], parameters or {})
    transport = "file" if supports_file_uri(session) else "exec"
    arguments: dict[str, Any] = {"channels": _file_channel(path)} if transport == "file" \
        else {"uri": f"exec:cat {shlex.quote(path)}"}
    if schema_features(session)["exit_on_error"]:
        arguments["exit-on-error"] = False  # keep QEMU, and query-migrate's error, when the load fails
    started = time.monotonic()
    seen: dict[str, float] = {}
    with session.subscribe(("MIGRATION", "RESUME")) as events:
        try:
            set_capabilities(session, ["events"])  # a state file carries no post-copy or multifd
            if parameters:
                session.execute("migrate-set-parameters", parameters)
            session.execute("migrate-incoming", arguments)
            if (end := _wait_migration(session, events, started + timeout, seen)) != "completed":
                raise _failure(session, end)
            load_time_ms = round((time.monotonic() - started) * 1000)
            # A state saved while running restarts by itself (RESUME before `completed`); ours was saved paused.
            status = settled_state(session, "inmigrate")
            if status != "running" and resume:
                if before_resume:
                    before_resume()
                session.execute("cont")
                seen["RESUME"] = event_time(events.wait(lambda event: event["event"] == "RESUME",
                                                        time.monotonic() + STOP_TIMEOUT, "the VM to resume"))
                status = session.execute("query-status")["status"]
        except (QMPError, StateFileError) as exc:
            if (status := run_state(session)) is None:
                exc = StateFileError("QEMU went away (before 9.1 QEMU exits when a load fails; its log says why)")
            raise StateFileError(f"loading the VM state from {path} failed: {exc}", status == "running") from exc
    return {"size": os.path.getsize(path), "transport": transport, "load_time_ms": load_time_ms,
            "resume_time": seen.get("RESUME"), "status": status}
