# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who the controller is: the ansible-playbook process that runs a play, as a lease records it, and whether that
process has ended.

Private to the livemig.qemu collection. Actions run in Ansible's worker processes, children of the process that
runs the play. A process is known by its pid and its start time (a pid is reused), on one boot of one machine.
"""
from __future__ import annotations

import os
import socket
from typing import Any


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), None without /proc or once it has ended."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(") ", 1)[-1].split()
    return None if fields[0] == "Z" else fields[19]


def identity() -> dict[str, Any]:
    """The controller process of the play this worker runs for."""
    pid = os.getppid()
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"), "pid": pid,
            "started": _started(pid)}


def gone(controller: dict[str, Any] | None) -> bool:
    """Whether `controller` provably ended: it ran on this machine, and its boot has ended or its process is gone.
    False for another machine's controller, or when this machine cannot tell (no /proc)."""
    if not controller or controller.get("host") != socket.gethostname() or not controller.get("started"):
        return False
    if controller.get("boot_id") != _read("/proc/sys/kernel/random/boot_id"):
        return True
    return _started(int(controller["pid"])) != controller["started"]
