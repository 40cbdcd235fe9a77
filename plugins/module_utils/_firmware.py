# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""This host's UEFI firmware, found the way QEMU's own tools find it: the firmware descriptors (docs/interop/
firmware.json in QEMU) that distributions install with OVMF.

Private to the livemig.qemu collection. A VM with firmware uefi runs the descriptor's code file read-only and its own
copy of the variable-store template. Both become guest RAM of a fixed size, so a live move needs equal sizes on
both hosts; the planner compares what `find_uefi` reports on each.
"""
from __future__ import annotations

import fnmatch
import json
import os

DESCRIPTOR_DIRS = ("/etc/qemu/firmware", "/usr/share/qemu/firmware")
INSTALL_HINT = "install the OVMF firmware (Debian and Ubuntu: package ovmf; Fedora and RHEL: edk2-ovmf)"


def descriptor_dirs(qemu_binary: str | None = None) -> list[str]:
    """Where descriptors live: the system's, and those of a QEMU installed under its own prefix."""
    dirs = list(DESCRIPTOR_DIRS)
    if qemu_binary and os.path.isabs(qemu_binary):
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(qemu_binary)))
        own = os.path.join(prefix, "share", "qemu", "firmware")
        if own not in dirs:
            dirs.append(own)
    return dirs


def _descriptors(dirs: list[str]) -> list[tuple[str, dict]]:
    """Every descriptor by file name, a name in an earlier directory hiding the same name in a later one (QEMU's
    rule), in file-name order (their priority)."""
    found: dict[str, str] = {}
    for directory in dirs:
        if os.path.isdir(directory):
            for entry in os.listdir(directory):
                if entry.endswith(".json"):
                    found.setdefault(entry, os.path.join(directory, entry))
    descriptors = []
    for entry in sorted(found):
        try:
            with open(found[entry], encoding="utf-8") as handle:
                descriptors.append((found[entry], json.load(handle)))
        except (OSError, ValueError):
            continue
    return descriptors


def _suits(descriptor: dict, machine: str | None) -> bool:
    mapping = descriptor.get("mapping") or {}
    if "uefi" not in descriptor.get("interface-types", []) or mapping.get("device") != "flash":
        return False
    if mapping.get("mode", "split") != "split" or "nvram-template" not in mapping:
        return False
    features = set(descriptor.get("features", []))
    if features & {"requires-smm", "secure-boot", "enrolled-keys"}:
        return False
    for target in descriptor.get("targets", []):
        if target.get("architecture") == "x86_64" and (
                machine is None or any(fnmatch.fnmatch(machine, pattern) for pattern in target.get("machines", []))):
            return True
    return False


def find_uefi(machine: str | None = None, qemu_binary: str | None = None) -> dict:
    """The UEFI firmware for `machine` (without Secure Boot): {found, code, vars_template, code_size, vars_size,
    descriptor}, or {found: false, reason}."""
    dirs = descriptor_dirs(qemu_binary)
    for path, descriptor in _descriptors(dirs):
        if not _suits(descriptor, machine):
            continue
        mapping = descriptor["mapping"]
        code, template = mapping["executable"]["filename"], mapping["nvram-template"]["filename"]
        if all(os.path.isfile(item) for item in (code, template)):
            return {"found": True, "code": code, "vars_template": template, "code_size": os.path.getsize(code),
                    "vars_size": os.path.getsize(template), "descriptor": path}
    return {"found": False, "reason": f"no UEFI firmware without Secure Boot{' for ' + machine if machine else ''} "
                                      f"is described in {', '.join(dirs)}: {INSTALL_HINT}"}
