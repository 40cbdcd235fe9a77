# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM's devices on the target, from both hosts' `qemu_host_check` results: what blocks each method, the CD-ROM,
the room, and how the target announces the guest's MACs.

Private to the livemig.qemu collection. Pure functions; `_negotiate.make_plan` merges their answers into the plan.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._paths import nic_id
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import VMSpec

MIB = 1024 * 1024
ROOM_MARGIN = 64 * MIB  # metadata and the guest's writes during the move, on top of what the images hold now
ANNOUNCE_DEFAULTS = {"announce": True, "announce_rounds": 5, "announce_initial_ms": 50, "announce_max_ms": 550,
                     "announce_step_ms": 100}
ANNOUNCE_LIMITS = {"announce_rounds": (0, 1000), "announce_initial_ms": (1, 100000), "announce_max_ms": (1, 100000),
                   "announce_step_ms": (1, 10000)}


def firmware_problems(spec: VMSpec, source: dict[str, Any], target: dict[str, Any], target_name: str
                      ) -> tuple[list[str], list[str]]:
    """(problems for a move that keeps the guest running, problems for a cold move) from the two hosts' UEFI
    firmware: its code and variable store are guest memory of a fixed size, which must match for a live or
    stateful move; a cold boot only needs a variable store of the same layout."""
    if spec.firmware != "uefi":
        return [], []
    there, here = source.get("firmware") or {}, target.get("firmware") or {}
    if not here.get("found") or not there.get("found"):
        return [], []  # the target's own problems say that it has none
    keep, cold = [], []
    for key, what in (("code_size", "code"), ("vars_size", "variable store")):
        if there.get(key) != here.get(key):
            problem = (f"the UEFI firmware {what} on {target_name} has {here.get(key)} bytes, not "
                       f"{there.get(key)} as on the source: install the same OVMF build")
            keep.append(problem)
            if key == "vars_size":
                cold.append(problem)
    return keep, cold


def cdrom_plan(spec: VMSpec, source: dict[str, Any], target: dict[str, Any], target_name: str
               ) -> tuple[dict[str, Any] | None, list[str]]:
    """What happens to the CD-ROM image: the same on both hosts (nothing), missing on the target (copied first), or
    different (no move: the guest would read other data at the same sectors)."""
    if not spec.cdrom:
        return None, []
    there, here = source.get("cdrom") or {}, target.get("cdrom") or {}
    if not there:
        return None, []
    if not there.get("exists"):
        return None, [f"the CD-ROM image {spec.cdrom} is missing on the source"]
    if not here.get("exists"):
        return {"path": spec.cdrom, "action": "copy", "size": there["size"], "sha256": there["sha256"],
                "reason": f"missing on {target_name}, copied there before the move"}, []
    if (here.get("size"), here.get("sha256")) != (there.get("size"), there.get("sha256")):
        return None, [f"the CD-ROM image {spec.cdrom} differs between the hosts (source {there.get('size')} bytes, "
                      f"sha256 {str(there.get('sha256'))[:12]}...; {target_name} {here.get('size')} bytes, sha256 "
                      f"{str(here.get('sha256'))[:12]}...): put the same image on both, or remove it from "
                      f"{target_name} to have it copied"]
    return {"path": spec.cdrom, "action": "same", "size": here["size"], "sha256": here["sha256"],
            "reason": "the same image on both hosts (size and SHA-256)"}, []


def room_problems(spec: VMSpec, local: list[str], source: dict[str, Any], target: dict[str, Any],
                  target_name: str, cdrom: dict[str, Any] | None) -> dict[str, list[str]]:
    """Whether the target has room for what a move writes there: the local file images (as much as they take on
    the source, plus a margin), the copied CD-ROM, and for a stateful move the state file (as large as the RAM)."""
    room = target.get("room") or {}
    if not room or not source.get("volumes"):
        return {"images": [], "state": []}
    volumes = source["volumes"]
    images = sum(int(volumes.get(name, {}).get("allocated") or 0) for name in local
                 if volumes.get(name, {}).get("kind") != "block")
    images += ROOM_MARGIN if images else 0
    copied = int(cdrom["size"]) if cdrom and cdrom["action"] == "copy" else 0
    state = spec.memory_mb * MIB
    image_dir, state_dir = room["image_dir"], room["state_dir"]
    problems: dict[str, list[str]] = {"images": [], "state": []}
    if images + copied > image_dir["free"]:
        problems["images"].append(f"{target_name} has {image_dir['free'] // MIB} MiB free for the images, the move "
                                  f"needs {(images + copied) // MIB} MiB")
    same_fs = image_dir["device"] == state_dir["device"]
    state_need = state + (images + copied if same_fs else 0)
    if state_need > state_dir["free"]:
        problems["state"].append(f"{target_name} has {state_dir['free'] // MIB} MiB free for the state file, a "
                                 f"stateful move needs {state_need // MIB} MiB")
    return problems


def whole_number(key: str, value: Any, low: int, high: int | None = None, unit: str = "") -> int:
    """The role variable livemig_<key> as a whole number from `low` to `high` (no limit when None); a string of
    digits, as `-e name=value` gives, counts. Raises ValueError naming the variable and the range."""
    number = int(value) if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value) else value
    if isinstance(number, bool) or not isinstance(number, int) or number < low or (high is not None and number > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ValueError(f"livemig_{key} must be a whole number {bounds}{unit}, got {value!r}")
    return number


def check_announce(wishes: dict[str, Any]) -> dict[str, Any]:
    """The announce settings, checked against QEMU's limits; raises ValueError naming the variable."""
    settings = {key: wishes[key] for key in ANNOUNCE_DEFAULTS}  # check_wishes filled in the defaults
    if not isinstance(settings["announce"], bool):
        raise ValueError(f"livemig_announce must be true or false, got {settings['announce']!r}")
    for key, (low, high) in ANNOUNCE_LIMITS.items():
        settings[key] = whole_number(key, settings[key], low, high)
    return settings


def address_problems(host: str, address: Any, check: dict[str, Any]) -> list[str]:
    """Why `host` cannot listen for a move on its migration address: none set, a wildcard (every interface), or one
    the host does not have (its qemu_host_check tried to bind it)."""
    if not address:
        return [f"{host} has no migration address (set livemig_migration_address)"]
    try:
        wildcard = ipaddress.ip_address(str(address)).is_unspecified
    except ValueError:
        wildcard = False  # a host name: the host's own check resolves and binds it
    if wildcard:
        return [f"the migration address of {host} is {address}, which listens on every interface: set "
                "livemig_migration_address to the one address of the host on the migration network"]
    bind = check.get("address") or {}
    if bind.get("address") == address and not bind.get("bindable", True):
        return [f"{host} cannot listen on its migration address {address} (livemig_migration_address): "
                f"{bind.get('reason')}"]
    return []


def announce_plan(spec: VMSpec, settings: dict[str, Any]) -> dict[str, Any]:
    """How the target tells the network where the guest's MACs are now. QEMU sends the announcements itself as the
    guest resumes, from the target's announce parameters (set before the migration); the hand-over sends another
    round with announce-self. Switched off, the target's parameters say 0 rounds, or QEMU would still announce."""
    enabled = settings["announce"] and bool(spec.nics) and settings["announce_rounds"] > 0
    timing = {"initial": settings["announce_initial_ms"], "max": settings["announce_max_ms"],
              "rounds": settings["announce_rounds"] if enabled else 0, "step": settings["announce_step_ms"]}
    return {
        "enabled": enabled,
        "nics": [{"name": nic.name, "mac": nic.mac, "bridge": nic.bridge, "id": nic_id(nic.name)} for nic in spec.nics],
        "parameters": {f"announce-{key}": value for key, value in timing.items()} if spec.nics else {},
        "self": {**timing, "interfaces": [nic_id(nic.name) for nic in spec.nics]} if enabled else None,
    }
