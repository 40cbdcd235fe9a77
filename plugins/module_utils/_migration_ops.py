# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The QMP operations every migration path shares: capabilities, run state, cancel, resume, undo, ports.

Private to the livemig.qemu collection. The live source (`_migration`), the target (`_incoming`) and the state
file (`_statefile`) all set their capabilities, cancel, resume and roll back through these, so that each rule
holds in one place.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ansible_collections.livemig.qemu.plugins.module_utils import _mirror
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession

UNLIMITED_BANDWIDTH = 1 << 40  # bytes/s
POSTCOPY = ("postcopy-active", "postcopy-paused", "postcopy-recover-setup", "postcopy-recover")
ACTIVE = ("setup", "active", "cancelling", "pre-switchover", "device", "wait-unplug", *POSTCOPY)
PAUSED = ("paused", "finish-migrate", "postmigrate")
UNREPORTED_PARAMETERS = ("block-bitmap-mapping",)  # settable, but absent from query-migrate-parameters until set
POSTCOPY_RECOVERY = ("the guest's memory is split between the two hosts: recover it by resuming the post-copy "
                     "(migrate-recover on the target, then migrate with resume=true on the source) once the link "
                     "is back; never resume the source")
PORT_ATTEMPTS = 5

Listening = TypeVar("Listening")


class RequestError(LivemigError, ValueError):
    """Capabilities or parameters this QEMU does not know, or that must be given another way."""


def check_request(session: QMPSession, capabilities: list[str], parameters: dict[str, Any],
                  managed: dict[str, str] | None = None) -> dict[str, Any]:
    """Check names against what QEMU reports; the parameters with numbers and booleans given as strings converted."""
    known_capabilities = [item["capability"] for item in session.execute("query-migrate-capabilities")]
    current = session.execute("query-migrate-parameters")
    problems = []
    unknown = sorted(set(capabilities) - set(known_capabilities))
    if unknown:
        problems.append(f"unknown migration capabilities {', '.join(unknown)} "
                        f"(this QEMU knows {', '.join(sorted(known_capabilities))})")
    unknown = sorted(set(parameters) - set(current) - set(UNREPORTED_PARAMETERS))
    if unknown:
        problems.append(f"unknown migration parameters {', '.join(unknown)} "
                        f"(this QEMU knows {', '.join(sorted([*current, *UNREPORTED_PARAMETERS]))})")
    for name, option in (managed or {}).items():
        if name in parameters:
            problems.append(f"set {name} with the option {option}, not in parameters")
    if problems:
        raise RequestError("; ".join(problems))
    return {name: _coerce(value, current.get(name)) for name, value in parameters.items()}


def _coerce(value: Any, like: Any) -> Any:
    """A value templated into a string, back to the type QEMU reports for the parameter."""
    if not isinstance(value, str):
        return value
    if isinstance(like, bool):
        return {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}.get(
            value.lower(), value)
    if isinstance(like, int) and value.strip().isdigit():
        return int(value)
    return value


def set_capabilities(session: QMPSession, on: Iterable[str], off: Iterable[str] = ()) -> None:
    """Exactly the capabilities `on`: every other one an earlier run or migration left on is switched off
    (a QEMU that was a migration target may still have postcopy-ram or multifd on). `off` are switched off
    explicitly even when QEMU reports them off."""
    states = {name: False for name in off}
    states.update({name: True for name in on})
    for item in session.execute("query-migrate-capabilities"):
        if item["state"] and item["capability"] not in states:
            states[item["capability"]] = False
    session.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": name, "state": state} for name, state in sorted(states.items())]})


def run_state(session: QMPSession) -> str | None:
    """QEMU's run state, or None when it no longer answers."""
    try:
        return session.execute("query-status")["status"]
    except QMPError:
        return None


def settled_state(session: QMPSession, leaving: str = "finish-migrate", timeout: float = 10.0) -> str | None:
    """The run state once QEMU has left `leaving` (a bounded wait); None when QEMU no longer answers."""
    deadline = time.monotonic() + timeout
    while True:
        status = run_state(session)
        if status != leaving or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def migration_status(session: QMPSession) -> str | None:
    try:
        return session.execute("query-migrate").get("status")
    except QMPError:
        return None


def cancel(session: QMPSession, timeout: float = 30.0) -> bool:
    """Cancel a migration in progress and wait until QEMU has stopped it; True if there was one."""
    status = session.execute("query-migrate").get("status")
    if status in POSTCOPY:
        raise QMPError(f"the migration is {status}: cancelling it would lose the guest; {POSTCOPY_RECOVERY}",
                       "migrate_cancel")
    if status not in ACTIVE:
        return False
    session.execute("migrate_cancel")
    deadline = time.monotonic() + timeout
    while session.execute("query-migrate").get("status") in ACTIVE:
        if time.monotonic() > deadline:
            raise QMPError("the migration did not stop after migrate_cancel", "migrate_cancel")
        time.sleep(0.05)
    return True


def resume_if_paused(session: QMPSession) -> bool:
    """Resume a source the migration left paused. Only when the target provably never ran."""
    if session.execute("query-status")["status"] not in PAUSED:
        return False
    status = session.execute("query-migrate").get("status")
    if status in POSTCOPY:
        raise QMPError(f"the migration is {status}: the target runs the guest; {POSTCOPY_RECOVERY}", "cont")
    session.execute("cont")
    return True


def undo(steps: Iterable[tuple[str, Callable[[], Any]]]) -> list[str]:
    """Run every undo step, also after one has failed; the failures as 'step: why' notes."""
    notes = []
    for what, step in steps:
        try:
            step()
        except LivemigError as exc:
            notes.append(f"{what}: {exc}")
    return notes


def with_notes(cause: str, notes: list[str]) -> str:
    return f"{cause}; rollback problems: {'; '.join(notes)}" if notes else cause


def host_port(host: str, port: int | str) -> str:
    """`host:port` as URIs and QEMU's socket addresses write it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def bind_with_retry(listen: Callable[[int], Listening], address: str, port: int) -> tuple[Listening, int]:
    """`listen(port)` on the given port, or on a free one (port 0). A free port can be taken by someone else
    before the listener binds it: then another one is tried, a few times."""
    for attempt in range(PORT_ATTEMPTS):
        chosen = port or free_port(address)
        try:
            return listen(chosen), chosen
        except LivemigError as exc:
            if port or "in use" not in str(exc).lower() or attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def abort_mirrors(session: QMPSession, nodes: Iterable[str]) -> None:
    for node in nodes:
        _mirror.abort(session, node)
