# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's QEMU process on this host: find, start, stop, clean up after it.

Private to the livemig.qemu collection.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

from ansible_collections.livemig.qemu.plugins.module_utils import _files
from ansible_collections.livemig.qemu.plugins.module_utils._command import CommandTimeout, Completed, Runner
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import process_alive, qemu_pid


class VMHostError(LivemigError):
    """Starting, stopping or preparing a VM on this host failed."""


def running_pid(paths: VMPaths) -> int | None:
    """The pid of this VM's QEMU on this host, checked against its command line."""
    return qemu_pid(paths.pidfile, paths.qmp)


def vm_status(paths: VMPaths, timeout: float = 10.0) -> str | None:
    """QEMU's run state (running, paused, inmigrate, postmigrate, ...), or None if no QEMU runs."""
    if running_pid(paths) is None:
        return None
    with QMPSession(paths.qmp, connect_timeout=timeout) as session:
        return session.execute("query-status")["status"]


def clean_run_files(paths: VMPaths) -> None:
    _files.remove(*paths.sockets, paths.guest_agent, paths.pidfile, paths.progress)


def start_qemu(run: Runner, argv: list[str], paths: VMPaths, timeout: float = 120.0) -> int:
    """Start a daemonized QEMU; sockets exist and the pid is known when this returns.

    With -daemonize, QEMU's first process exits once the VM is set up, so this is a short run with a deadline.
    """
    _files.private_dir(paths.run_dir, paths.vm_run_dir)
    clean_run_files(paths)
    try:
        result = run(argv, timeout, umask=0o077)
    except CommandTimeout:
        raise VMHostError(f"QEMU did not finish starting within {timeout:.0f}s") from None
    if result.rc != 0:
        clean_run_files(paths)
        raise VMHostError(f"QEMU failed to start: {what_qemu_said(result, paths)}")
    for path in (*paths.sockets, paths.guest_agent):
        if os.path.exists(path):  # the guest agent's only when the VM has one
            os.chmod(path, 0o600)  # QEMU's -daemonize resets the umask
    pid = running_pid(paths)
    if pid is None:
        clean_run_files(paths)
        raise VMHostError(f"QEMU exited without running the VM (no live pid in {paths.pidfile}): "
                          f"{what_qemu_said(result, paths)}")
    return pid


def what_qemu_said(result: Completed, paths: VMPaths, lines: int = 5) -> str:
    """The last lines QEMU wrote about its start: on stderr, else in its log (-D), else on stdout."""
    try:
        with open(paths.log, encoding="utf-8", errors="replace") as handle:
            log = handle.read()
    except OSError:
        log = ""
    for text in (result.stderr, log, result.stdout):
        if text.strip():
            return " / ".join(text.strip().splitlines()[-lines:])
    return f"exit status {result.rc}, no message"


def wait_exit(pid: int, timeout: float, alive: Callable[[int], bool] = process_alive) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop_qemu(paths: VMPaths, pid: int, powerdown_timeout: float) -> str:
    """Stop QEMU: ACPI power-down first when a timeout is given, then quit, then SIGKILL."""
    how = "quit"
    with contextlib.suppress(QMPError):
        with QMPSession(paths.qmp, connect_timeout=5) as session:
            if powerdown_timeout > 0 and session.execute("query-status")["status"] == "running":
                session.execute("system_powerdown")
                if wait_exit(pid, powerdown_timeout):
                    how = "powerdown"
            if how == "quit":
                with contextlib.suppress(QMPError):
                    session.execute("quit", timeout=5)
    if not wait_exit(pid, 10):
        kill_qemu(pid)
        how = "kill"
    clean_run_files(paths)
    return how


def kill_qemu(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_exit(pid, 10)
