# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The probe's answers kept per QEMU binary, so that every play does not start a probe QEMU and a KVM test boot.

Private to the livemig.qemu collection. An entry is keyed by the binary's real path, its mtime and size, the
kernel's boot id and the KVM device: an upgraded QEMU, a reboot or a (re)loaded kvm module each ask again. It lives
in `<run_dir>/.qemu-probe/` (the run directory is usually on tmpfs, and a dot-name is no VM's directory).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files

CACHE_DIR = ".qemu-probe"
FORMAT = 1  # bump when host_facts' answer changes shape


def _stat_key(path: str) -> list[Any]:
    try:
        status = os.stat(path)
    except OSError:
        return [path, None]
    return [path, status.st_mtime_ns, status.st_size, status.st_rdev, status.st_ctime_ns]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def cache_key(binary: str, check_kvm: bool) -> str:
    real = os.path.realpath(binary)
    parts = [FORMAT, _stat_key(real)[:3], _boot_id(), _stat_key("/dev/kvm"), check_kvm]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cached_facts(run_dir: str | None, binary: str, check_kvm: bool,
                 probe: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(the probe's answers, whether they came from the cache); without a run directory, always probe."""
    if not run_dir:
        return probe(), False
    path = os.path.join(run_dir, CACHE_DIR, cache_key(binary, check_kvm) + ".json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), True
    except (OSError, ValueError):
        pass
    facts = probe()
    try:
        _files.private_dir(run_dir, os.path.dirname(path))
        _files.atomic_write(path, json.dumps(facts), durable=False)
    except (OSError, _files.PrivacyError):
        pass  # a cache that cannot be written only costs the next play another probe
    return facts, False
