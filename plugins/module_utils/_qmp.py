# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QMP session: a synchronous facade over qemu.qmp's asyncio QMPClient.

Private to the livemig.qemu collection; the interface may change without notice.
It never touches AnsibleModule: failures are raised as QMPError and the caller
decides what to report.
"""
from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError

try:
    from qemu.qmp import EventListener, ExecuteError, QMPClient
    from qemu.qmp import QMPError as _LibraryError

    QMP_IMPORT_ERROR = None
except ImportError:
    QMP_IMPORT_ERROR = traceback.format_exc()

Event = dict[str, Any]
EventFilter = Callable[[Event], bool]


class QMPError(LivemigError):
    """A failed QMP exchange, carrying the command and QEMU's error class."""

    def __init__(self, message: str, command: str | None = None, error_class: str | None = None):
        super().__init__(message)
        self.command = command
        self.error_class = error_class

    def __str__(self) -> str:
        text = super().__str__()
        if self.command:
            text = f"{self.command}: {text}"
        if self.error_class:
            text = f"{text} ({self.error_class})"
        return text


class QMPTimeout(QMPError):
    """QEMU did not answer, or an awaited event did not arrive, in time."""


def event_time(event: Event) -> float:
    """QEMU's wall-clock timestamp of an event, in seconds."""
    stamp = event.get("timestamp") or {}
    return stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6


class Subscription:
    """Events of some names, queued from the moment of subscribing.

    Subscribe before sending the command that triggers the event, so that it
    cannot be missed. Each waiter gets its own listener.
    """

    def __init__(self, session: QMPSession, names: Iterable[str]):
        self._session = session
        self._listener = EventListener(names=list(names))
        session.client.register_listener(self._listener)
        self._registered = True

    def get(self, timeout: float) -> Event | None:
        """The next event, or None when none arrives within timeout seconds."""
        try:
            message = self._session.run(self._listener.get(), max(timeout, 0.0))
        except QMPTimeout:
            return None
        return dict(message)

    def wait(self, accept: EventFilter | None, deadline: float, what: str) -> Event:
        """Wait for the first event that `accept` accepts, until the monotonic `deadline`."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPTimeout(f"timed out waiting for {what}")
            event = self.get(remaining)
            if event is not None and (accept is None or accept(event)):
                return event

    def close(self) -> None:
        if self._registered:
            self._session.client.remove_listener(self._listener)
            self._registered = False

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QMPSession:
    """One connection to a QEMU monitor socket."""

    ATTEMPT_TIMEOUT = 5.0

    def __init__(self, path: str, connect_timeout: float = 10.0, command_timeout: float = 30.0,
                 guest_agent: bool = False):
        """`guest_agent`: the socket is a guest agent's channel, which speaks the same JSON commands without QMP's
        greeting and capability negotiation."""
        if QMP_IMPORT_ERROR is not None:
            raise QMPError("the Python library qemu.qmp is not installed on this host")
        self.path = path
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.guest_agent = guest_agent
        self._loop = asyncio.new_event_loop()
        self.client = self._new_client()

    def _new_client(self) -> QMPClient:
        client = QMPClient("livemig")
        if self.guest_agent:
            client.await_greeting = False
            client.negotiate = False
        return client

    def run(self, coroutine: Any, timeout: float) -> Any:
        """Run one coroutine of the client on this session's loop, bounded in time."""
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coroutine, timeout))
        except asyncio.TimeoutError as exc:
            raise QMPTimeout(f"no answer within {timeout:.1f}s") from exc

    def connect(self) -> QMPSession:
        """Connect, retrying while the socket is absent or held by another client."""
        deadline = time.monotonic() + self.connect_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                attempt = min(max(deadline - time.monotonic(), 0.1), self.ATTEMPT_TIMEOUT)
                self.run(self.client.connect(self.path), attempt)
                return self
            except (QMPTimeout, OSError, _LibraryError) as exc:
                last_error = exc
                self._reset_client()
                time.sleep(0.05)
        raise QMPTimeout(f"cannot connect to the QMP socket {self.path} within "
                         f"{self.connect_timeout:.0f}s (QEMU not running, or the monitor is busy): {last_error}")

    def _reset_client(self) -> None:
        try:
            self._loop.run_until_complete(self.client.disconnect())
        except Exception:  # pylint: disable=broad-except
            pass
        self.client = self._new_client()

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """Run one QMP command and return its result."""
        try:
            return self.run(self.client.execute(command, arguments or None), timeout or self.command_timeout)
        except ExecuteError as exc:
            raise QMPError(str(exc), command, exc.error_class) from exc
        except QMPTimeout as exc:
            raise QMPTimeout(str(exc), command) from exc
        except (_LibraryError, OSError, EOFError) as exc:
            raise QMPError(f"connection lost: {exc!r}", command) from exc

    def subscribe(self, names: Iterable[str]) -> Subscription:
        return Subscription(self, names)

    def close(self) -> None:
        if not self._loop.is_closed():
            try:
                self._loop.run_until_complete(asyncio.wait_for(self.client.disconnect(), 5))
            except Exception:  # pylint: disable=broad-except
                pass
            self._loop.close()

    def __enter__(self) -> QMPSession:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
