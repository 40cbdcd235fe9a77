# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Does the guest answer through its agent: the liveness check after a move. The qemu_guest_ping module's handler.

Private to the livemig.qemu collection. QEMU is the server of the agent's socket, so a connection succeeds whether or
not an agent runs in the guest: every exchange has a deadline. QEMU's own monitor says first whether the guest has
opened its end of the port at all (`frontend-open`), a quick answer for a guest without an agent. A new client first
syncs with a random id, so that a reply meant for an earlier client (one on the source host, before the move) is
dropped, not taken for this one's.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._module import Task
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession

AGENT_CHARDEV = "qga0"
ATTEMPT_TIMEOUT = 5.0
RETRY_DELAY = 0.5


def port_open(session: QMPSession) -> bool | None:
    """Whether the guest has the agent's port open; None when the VM has no agent channel."""
    for chardev in session.execute("query-chardev"):
        if chardev.get("label") == AGENT_CHARDEV:
            return bool(chardev.get("frontend-open"))
    return None


def ask(path: str, timeout: float) -> None:
    """One guest-sync and guest-ping on a fresh connection; raises QMPError when the agent does not answer."""
    with QMPSession(path, connect_timeout=timeout, command_timeout=timeout, guest_agent=True) as agent:
        token = secrets.randbelow(2 ** 31)
        if agent.execute("guest-sync", {"id": token}) != token:
            raise QMPError("the agent answered guest-sync with another id", "guest-sync")
        agent.execute("guest-ping")


def run(task: Task) -> dict[str, Any]:
    """The qemu_guest_ping module: wait up to `timeout` seconds for the guest agent to answer guest-ping."""
    paths, timeout = task.paths, task.params["timeout"]
    started = time.monotonic()
    deadline = started + timeout
    with task.qmp(paths.qmp) as session:
        opened = port_open(session)
        if opened is None:
            return _verdict(task, False, "the VM has no guest agent channel", None)
        while not opened and time.monotonic() < deadline:
            time.sleep(RETRY_DELAY)
            opened = port_open(session)
    if not opened:
        return _verdict(task, False, f"the guest did not open its agent port within {timeout:.0f}s (no agent runs "
                                     "in it)", None)
    last = ""
    while True:
        try:
            ask(paths.guest_agent, max(0.5, min(ATTEMPT_TIMEOUT, deadline - time.monotonic())))
            elapsed = round((time.monotonic() - started) * 1000)
            return _verdict(task, True, f"the guest agent answered guest-ping after {elapsed} ms", elapsed)
        except QMPError as exc:
            last = str(exc)
        if time.monotonic() + RETRY_DELAY >= deadline:
            return _verdict(task, False, f"the guest agent did not answer within {timeout:.0f}s: {last}", None)
        time.sleep(RETRY_DELAY)


def _verdict(task: Task, answered: bool, msg: str, elapsed: int | None) -> dict[str, Any]:
    if not answered and task.params["required"]:
        raise LivemigError(msg, details={"answered": False})
    return {"changed": False, "answered": answered, "msg": msg, "answer_ms": elapsed}
