# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-host record of a VM: ownership and pinned ABI, plus this host's volatile keys.

Private to the livemig.qemu collection. Each host keeps its own record; nothing
in it is ever copied to another host. `owner` says which host the VM belongs to;
`volatile` holds what only makes sense on this host (pid, sockets, ports).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files


@dataclass
class HostRecord:
    vm: str
    owner: bool = False
    machine: str | None = None
    accel: str | None = None
    handed_over_to: str | None = None
    volatile: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.volatile.get("pid")


def load_record(path: str, vm: str) -> HostRecord | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    known = {key: data[key] for key in ("owner", "machine", "accel", "handed_over_to", "volatile") if key in data}
    return HostRecord(vm=vm, **known)


def save_record(path: str, record: HostRecord) -> None:
    """Write atomically: a crash leaves the old record or the new one, never half of one."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    _files.atomic_write(path, json.dumps(asdict(record), indent=2, sort_keys=True))


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
