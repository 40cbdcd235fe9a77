# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM spec (the inventory's description of a VM) -> validated spec, host paths and QEMU argv.

Private to the livemig.qemu collection. The same spec, machine type and
accelerator give the same guest ABI on every host: versioned machine type,
named CPU model, fixed device ids and PCI addresses.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths, device_id, file_node, node_name

VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DISK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
DISK_FORMATS = ("qcow2", "raw")
ACCELS = ("auto", "kvm", "tcg")
FIRST_DISK_SLOT = 0x08


class SpecError(LivemigError, ValueError):
    """The VM description cannot be used; the message says what to fix."""


def check_vm_name(name: str) -> str:
    if not isinstance(name, str) or not VM_NAME.fullmatch(name) or ".." in name:
        raise SpecError(f"invalid VM name {name!r}: use letters, digits, '.', '_' or '-' "
                        "(no '/', no '..', at most 63 characters, not starting with '.' or '-')")
    return name


@dataclass(frozen=True)
class Disk:
    name: str
    size_mb: int
    format: str = "qcow2"
    shared: bool = False


@dataclass(frozen=True)
class VMSpec:
    name: str
    memory_mb: int
    vcpus: int
    machine: str
    cpu_model: str
    accel: str = "auto"
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    disks: tuple[Disk, ...] = field(default_factory=tuple)

    @property
    def local_disks(self) -> tuple[Disk, ...]:
        return tuple(disk for disk in self.disks if not disk.shared)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise SpecError(f"{what} must be a positive integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SpecError(f"{what} must be a positive integer, got {value!r}") from None
    if number <= 0 or str(number) != str(value).strip():
        raise SpecError(f"{what} must be a positive integer, got {value!r}")
    return number


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or "," in value:
        raise SpecError(f"{what} must be a non-empty string without ',', got {value!r}")
    return value


def _disk(raw: Any, vm: str, index: int) -> Disk:
    if not isinstance(raw, dict):
        raise SpecError(f"VM {vm}: disks[{index}] must be a dict with name, size_mb, format, shared")
    unknown = set(raw) - {"name", "size_mb", "format", "shared"}
    if unknown:
        raise SpecError(f"VM {vm}: disks[{index}] has unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not DISK_NAME.fullmatch(name):
        raise SpecError(f"VM {vm}: disks[{index}].name {name!r} must match {DISK_NAME.pattern}")
    disk_format = raw.get("format", "qcow2")
    if disk_format not in DISK_FORMATS:
        raise SpecError(f"VM {vm}: disk {name}: format must be one of {', '.join(DISK_FORMATS)}")
    shared = raw.get("shared", False)
    if not isinstance(shared, bool):
        raise SpecError(f"VM {vm}: disk {name}: shared must be true or false")
    return Disk(name, _positive_int(raw.get("size_mb"), f"VM {vm}: disk {name}: size_mb"), disk_format, shared)


def parse_spec(name: str, raw: Any) -> VMSpec:
    """Validate one livemig_vms entry; raise SpecError naming what to fix."""
    check_vm_name(name)
    if not isinstance(raw, dict):
        raise SpecError(f"VM {name}: its livemig_vms entry must be a dict")
    known = {"memory_mb", "vcpus", "machine", "cpu_model", "accel", "kernel", "initrd", "append", "disks"}
    unknown = set(raw) - known
    if unknown:
        raise SpecError(f"VM {name}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    for key in ("memory_mb", "vcpus", "machine", "cpu_model"):
        if raw.get(key) in (None, ""):
            raise SpecError(f"VM {name}: {key} is required")
    accel = raw.get("accel", "auto")
    if accel not in ACCELS:
        raise SpecError(f"VM {name}: accel must be one of {', '.join(ACCELS)}, got {accel!r}")
    disks = tuple(_disk(item, name, i) for i, item in enumerate(raw.get("disks") or []))
    if len({disk.name for disk in disks}) != len(disks):
        raise SpecError(f"VM {name}: disk names must be unique")
    for key in ("kernel", "initrd"):
        path = raw.get(key)
        if path is not None and (not isinstance(path, str) or not os.path.isabs(path)):
            raise SpecError(f"VM {name}: {key} must be an absolute path, got {path!r}")
    if raw.get("initrd") and not raw.get("kernel"):
        raise SpecError(f"VM {name}: initrd needs kernel")
    return VMSpec(
        name=name,
        memory_mb=_positive_int(raw["memory_mb"], f"VM {name}: memory_mb"),
        vcpus=_positive_int(raw["vcpus"], f"VM {name}: vcpus"),
        machine=_text(raw["machine"], f"VM {name}: machine"),
        cpu_model=_text(raw["cpu_model"], f"VM {name}: cpu_model"),
        accel=accel,
        kernel=raw.get("kernel") or None,
        initrd=raw.get("initrd") or None,
        append=raw.get("append") or None,
        disks=disks,
    )


def root_bus(machine: str) -> str:
    return "pcie.0" if "q35" in machine else "pci.0"


def _socket_chardev(chardev_id: str, path: str) -> str:
    return f"socket,id={chardev_id},path={path},server=on,wait=off"


def build_argv(spec: VMSpec, paths: VMPaths, binary: str, machine: str, accel: str,
               incoming: bool = False) -> list[str]:
    """The QEMU command line for this VM on this host.

    `machine` must be a versioned machine type and `accel` a concrete
    accelerator (kvm or tcg): both are pinned by whoever starts the VM.
    """
    argv = [
        binary,
        "-name", f"{spec.name},debug-threads=on",
        "-machine", machine,
        "-accel", accel,
        "-cpu", spec.cpu_model,
        "-smp", str(spec.vcpus),
        "-m", f"{spec.memory_mb}M",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-daemonize", "-pidfile", paths.pidfile,
        "-D", paths.log, "-msg", "timestamp=on",
        "-chardev", _socket_chardev("qmp", paths.qmp), "-mon", "chardev=qmp,mode=control",
        "-chardev", _socket_chardev("qmp-job", paths.job_qmp), "-mon", "chardev=qmp-job,mode=control",
        "-chardev", _socket_chardev("serial0", paths.serial), "-serial", "chardev:serial0",
    ]
    if spec.kernel:
        argv += ["-kernel", spec.kernel]
    if spec.initrd:
        argv += ["-initrd", spec.initrd]
    if spec.append:
        argv += ["-append", spec.append]
    for slot, disk in enumerate(spec.disks, start=FIRST_DISK_SLOT):
        file_layer = file_node(disk.name)
        argv += [
            "-blockdev", json.dumps({"driver": "file", "filename": paths.disk(disk), "node-name": file_layer,
                                     "discard": "unmap"}, sort_keys=True),
            "-blockdev", json.dumps({"driver": disk.format, "file": file_layer, "node-name": node_name(disk.name)},
                                    sort_keys=True),
            "-device", json.dumps({"driver": "virtio-blk-pci", "drive": node_name(disk.name), "id": device_id(disk.name),
                                   "bus": root_bus(machine), "addr": hex(slot)}, sort_keys=True),
        ]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv
