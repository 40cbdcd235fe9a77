# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM spec (the inventory's description of a VM) -> a validated VMSpec.

Private to the livemig.qemu collection. Everything that must be the same on every host (the guest's ABI: machine,
CPU, devices, MAC addresses) is fixed here; what differs per host (paths, tap names) is derived elsewhere.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError

VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DISK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
NIC_NAME = DISK_NAME
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# A CPU model's name as QEMU lists them (Haswell-v4, qemu64, EPYC-Rome, Opteron_G5); no options, no help request.
CPU_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CPU_HELP = ("help", "?")
BRIDGE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
DISK_FORMATS = ("qcow2", "raw")
ACCELS = ("auto", "kvm", "tcg")
FIRMWARES = ("bios", "uefi")
NIC_MODELS = ("virtio-net-pci", "e1000", "e1000e", "rtl8139")
MAX_DISKS = 8
MAX_NICS = 8
MAX_QUEUES = 16
# Names the collection gives its own block nodes: a user disk may not take them.
NVRAM = "nvram"
CDROM = "cdrom"
RESERVED_DISK_NAMES = (NVRAM, CDROM)
SPEC_KEYS = ("memory_mb", "vcpus", "machine", "cpu_model", "accel", "kernel", "initrd", "append", "disks",
             "firmware", "nvram", "nics", "cdrom", "rng", "guest_agent")


class SpecError(LivemigError, ValueError):
    """The VM description cannot be used; the message says what to fix."""


def check_vm_name(name: str) -> str:
    if not isinstance(name, str) or not VM_NAME.fullmatch(name) or ".." in name:
        raise SpecError(f"invalid VM name {name!r}: use letters, digits, '.', '_' or '-' "
                        "(no '/', no '..', at most 63 characters, not starting with '.' or '-')")
    if name.endswith(tuple(f".{image_format}" for image_format in DISK_FORMATS)):
        raise SpecError(f"invalid VM name {name!r}: it ends like a disk image, and could be the name of another "
                        "VM's image (<vm>-<disk>.qcow2) in a directory the two share; choose a name without "
                        f"{', '.join('.' + image_format for image_format in DISK_FORMATS)} at the end")
    return name


def _cpu_model(value: Any, vm: str) -> str:
    if isinstance(value, str) and value.strip().lower() in CPU_HELP:
        raise SpecError(f"VM {vm}: cpu_model {value!r} asks QEMU for its list of models and is not one: write the "
                        "name of a model, such as Haswell-v4 or qemu64 (qemu_facts lists the models of a host's QEMU "
                        "as cpu_models)")
    if not isinstance(value, str) or not CPU_MODEL.fullmatch(value):
        raise SpecError(f"VM {vm}: cpu_model {value!r} is not the name of a CPU model: letters, digits, '_', '.' "
                        "and '-', such as Haswell-v4 (no options after a comma)")
    return value


@dataclass(frozen=True)
class Disk:
    """A volume of the VM. `kind` is file (an image in the host's image or shared dir), block (a block device at
    `path`, the same path on every host) or nvram (the UEFI variable store, an image beside the disks)."""
    name: str
    size_mb: int
    format: str = "qcow2"
    shared: bool = False
    path: str | None = None
    kind: str = "file"

    @property
    def size_bytes(self) -> int:
        return self.size_mb * 1024 * 1024


@dataclass(frozen=True)
class Nic:
    name: str
    bridge: str
    mac: str
    model: str = "virtio-net-pci"
    mtu: int | None = None
    queues: int = 1

    @property
    def virtio(self) -> bool:
        return self.model.startswith("virtio")


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
    firmware: str = "bios"
    nvram_shared: bool = False
    nics: tuple[Nic, ...] = field(default_factory=tuple)
    cdrom: str | None = None
    rng: bool = False
    guest_agent: bool = False

    @property
    def volumes(self) -> tuple[Disk, ...]:
        """Everything that holds the VM's data on a host: its disks, and with UEFI its variable store. A move
        mirrors or copies each local one; the CD-ROM is read-only and not among them."""
        if self.firmware != "uefi":
            return self.disks
        return (*self.disks, Disk(NVRAM, 0, "raw", self.nvram_shared, kind="nvram"))

    @property
    def nvram(self) -> Disk | None:
        """The UEFI variable store, a volume of a VM with firmware uefi."""
        return next((volume for volume in self.volumes if volume.kind == "nvram"), None)

    @property
    def local_volumes(self) -> tuple[Disk, ...]:
        return tuple(volume for volume in self.volumes if not volume.shared)

    @property
    def local_disks(self) -> tuple[Disk, ...]:
        return tuple(disk for disk in self.disks if not disk.shared)


def _positive_int(value: Any, what: str, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise SpecError(f"{what} must be a positive integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SpecError(f"{what} must be a positive integer, got {value!r}") from None
    if number <= 0 or str(number) != str(value).strip():
        raise SpecError(f"{what} must be a positive integer, got {value!r}")
    if maximum is not None and number > maximum:
        raise SpecError(f"{what} must be at most {maximum}, got {number}")
    return number


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or "," in value:
        raise SpecError(f"{what} must be a non-empty string without ',', got {value!r}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{what} must be true or false, got {value!r}")
    return value


def _absolute(value: Any, what: str) -> str:
    if not isinstance(value, str) or not os.path.isabs(value):
        raise SpecError(f"{what} must be an absolute path, got {value!r}")
    return value


def _keys(raw: Any, known: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError(f"{what} must be a dict with keys {', '.join(known)}")
    unknown = set(raw) - set(known)
    if unknown:
        raise SpecError(f"{what} has unknown keys {sorted(unknown)}; known: {', '.join(known)}")
    return raw


def _disk(raw: Any, vm: str, index: int) -> Disk:
    raw = _keys(raw, ("name", "size_mb", "format", "shared", "path"), f"VM {vm}: disks[{index}]")
    name = raw.get("name")
    if not isinstance(name, str) or not DISK_NAME.fullmatch(name):
        raise SpecError(f"VM {vm}: disks[{index}].name {name!r} must match {DISK_NAME.pattern}")
    if name in RESERVED_DISK_NAMES:
        raise SpecError(f"VM {vm}: disk name {name!r} is reserved (the collection uses "
                        f"{' and '.join(RESERVED_DISK_NAMES)} itself); choose another name")
    what = f"VM {vm}: disk {name}"
    path = _absolute(raw["path"], f"{what}: path") if raw.get("path") is not None else None
    disk_format = raw.get("format", "raw" if path else "qcow2")
    if disk_format not in DISK_FORMATS:
        raise SpecError(f"{what}: format must be one of {', '.join(DISK_FORMATS)}")
    if path and disk_format != "raw":
        raise SpecError(f"{what}: a disk on a block device (path) is raw; leave out format or set it to raw")
    size_mb = _positive_int(raw.get("size_mb"), f"{what}: size_mb")
    return Disk(name, size_mb, disk_format, _bool(raw.get("shared", False), f"{what}: shared"), path,
                "block" if path else "file")


def derived_mac(vm: str, nic: str) -> str:
    """A MAC address that is the same on every host and every start: locally administered, unicast."""
    digest = hashlib.sha256(f"livemig/{vm}/{nic}".encode()).digest()
    return ":".join(f"{byte:02x}" for byte in ((digest[0] & 0xFC) | 0x02, *digest[1:6]))


def _mac(value: Any, what: str) -> str:
    mac = value.lower() if isinstance(value, str) else value
    if not isinstance(mac, str) or not MAC.fullmatch(mac):
        raise SpecError(f"{what}: mac {value!r} is not a MAC address like 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise SpecError(f"{what}: mac {value} is a multicast address; a NIC needs a unicast one "
                        "(the lowest bit of the first byte clear)")
    if mac == "00:00:00:00:00:00":
        raise SpecError(f"{what}: mac 00:00:00:00:00:00 is not a usable address")
    return mac


def _nic(raw: Any, vm: str, index: int) -> Nic:
    raw = _keys(raw, ("name", "bridge", "mac", "model", "mtu", "queues"), f"VM {vm}: nics[{index}]")
    name = raw.get("name")
    if not isinstance(name, str) or not NIC_NAME.fullmatch(name):
        raise SpecError(f"VM {vm}: nics[{index}].name {name!r} must match {NIC_NAME.pattern}")
    what = f"VM {vm}: NIC {name}"
    bridge = raw.get("bridge")
    if not isinstance(bridge, str) or not BRIDGE_NAME.fullmatch(bridge):
        raise SpecError(f"{what}: bridge {bridge!r} must be the name of a bridge on the hosts "
                        "(at most 15 characters)")
    model = raw.get("model", "virtio-net-pci")
    if model not in NIC_MODELS:
        raise SpecError(f"{what}: unknown model {model!r}; use one of {', '.join(NIC_MODELS)}")
    mac = _mac(raw["mac"], what) if raw.get("mac") is not None else derived_mac(vm, name)
    mtu = _positive_int(raw["mtu"], f"{what}: mtu", 65535) if raw.get("mtu") is not None else None
    queues = _positive_int(raw.get("queues", 1), f"{what}: queues", MAX_QUEUES)
    if not model.startswith("virtio") and (mtu is not None or queues > 1):
        raise SpecError(f"{what}: mtu and queues need the virtio-net-pci model, not {model}")
    if mtu is not None and mtu < 68:
        raise SpecError(f"{what}: mtu must be at least 68, got {mtu}")
    return Nic(name, bridge, mac, model, mtu, queues)


def _named(items: Any, vm: str, what: str, parse: Any, maximum: int, label: str) -> tuple[Any, ...]:
    if items in (None, ""):
        return ()
    if not isinstance(items, list):
        raise SpecError(f"VM {vm}: {what} must be a list")
    if len(items) > maximum:
        raise SpecError(f"VM {vm}: at most {maximum} {what}, got {len(items)}")
    parsed = tuple(parse(item, vm, index) for index, item in enumerate(items))
    if len({item.name for item in parsed}) != len(parsed):
        raise SpecError(f"VM {vm}: {label} names must be unique")
    return parsed


def _nvram_shared(raw: Any, vm: str, firmware: str) -> bool:
    if raw in (None, {}):
        return False
    if firmware != "uefi":
        raise SpecError(f"VM {vm}: nvram is the UEFI variable store; it needs firmware: uefi")
    return _bool(_keys(raw, ("shared",), f"VM {vm}: nvram").get("shared", False), f"VM {vm}: nvram.shared")


def parse_spec(name: str, raw: Any) -> VMSpec:
    """Validate one livemig_vms entry; raise SpecError naming what to fix."""
    check_vm_name(name)
    raw = _keys(raw, SPEC_KEYS, f"VM {name}: its livemig_vms entry")
    for key in ("memory_mb", "vcpus", "machine", "cpu_model"):
        if raw.get(key) in (None, ""):
            raise SpecError(f"VM {name}: {key} is required")
    accel = raw.get("accel", "auto")
    if accel not in ACCELS:
        raise SpecError(f"VM {name}: accel must be one of {', '.join(ACCELS)}, got {accel!r}")
    firmware = raw.get("firmware", "bios")
    if firmware not in FIRMWARES:
        raise SpecError(f"VM {name}: firmware must be one of {', '.join(FIRMWARES)}, got {firmware!r}")
    disks = _named(raw.get("disks"), name, "disks", _disk, MAX_DISKS, "disk")
    devices = [disk.path for disk in disks if disk.path]
    if len(set(devices)) != len(devices):
        raise SpecError(f"VM {name}: two disks use the same block device")
    nics = _named(raw.get("nics"), name, "nics", _nic, MAX_NICS, "NIC")
    macs = [nic.mac for nic in nics]
    twice = sorted({mac for mac in macs if macs.count(mac) > 1})
    if twice:
        raise SpecError(f"VM {name}: two NICs have the MAC address {twice[0]}; each NIC needs its own")
    for key in ("kernel", "initrd"):
        if raw.get(key) is not None:
            _absolute(raw[key], f"VM {name}: {key}")
    if raw.get("initrd") and not raw.get("kernel"):
        raise SpecError(f"VM {name}: initrd needs kernel")
    return VMSpec(
        name=name,
        memory_mb=_positive_int(raw["memory_mb"], f"VM {name}: memory_mb"),
        vcpus=_positive_int(raw["vcpus"], f"VM {name}: vcpus"),
        machine=_text(raw["machine"], f"VM {name}: machine"),
        cpu_model=_cpu_model(raw["cpu_model"], name),
        accel=accel,
        kernel=raw.get("kernel") or None,
        initrd=raw.get("initrd") or None,
        append=raw.get("append") or None,
        disks=disks,
        firmware=firmware,
        nvram_shared=_nvram_shared(raw.get("nvram"), name, firmware),
        nics=nics,
        cdrom=_absolute(raw["cdrom"], f"VM {name}: cdrom") if raw.get("cdrom") else None,
        rng=_bool(raw.get("rng", False), f"VM {name}: rng"),
        guest_agent=_bool(raw.get("guest_agent", False), f"VM {name}: guest_agent"),
    )
