# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VMSpec on one host -> the QEMU command line.

Private to the livemig.qemu collection. The same spec, machine type and accelerator give the same guest ABI on every
host: versioned machine type, named CPU model, fixed device ids and PCI addresses, MACs from the spec. Only paths
and tap names are the host's own.
"""
from __future__ import annotations

import json
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._paths import (
    VMPaths, device_id, file_node, netdev_id, nic_id, node_name, tap_name)
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import CDROM, Disk, Nic, VMSpec

# The fixed PCI slots: a device keeps its address on every host and every start.
RNG_SLOT = 0x06
SERIAL_SLOT = 0x07
FIRST_DISK_SLOT = 0x08
FIRST_NIC_SLOT = 0x10
GUEST_AGENT_PORT = "org.qemu.guest_agent.0"
FIRMWARE_CODE_NODE = "fw-code"


def root_bus(machine: str) -> str:
    return "pcie.0" if "q35" in machine else "pci.0"


def _socket_chardev(chardev_id: str, path: str) -> str:
    return f"socket,id={chardev_id},path={path},server=on,wait=off"


def _json(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True)


def _blockdevs(file_options: dict[str, Any], format_options: dict[str, Any]) -> list[str]:
    return ["-blockdev", _json(file_options), "-blockdev", _json(format_options)]


def disk_nodes(disk: Disk, path: str) -> list[str]:
    """The protocol and format nodes of a volume. A block device is opened raw with the disk's exact size, so that
    a mirror into a larger device on another host sees two volumes of one size."""
    file_layer, node = file_node(disk.name), node_name(disk.name)
    if disk.kind == "block":
        return _blockdevs({"driver": "host_device", "filename": path, "node-name": file_layer, "discard": "unmap",
                           "cache": {"direct": True}, "aio": "native"},
                          {"driver": "raw", "file": file_layer, "node-name": node, "size": disk.size_bytes})
    file_options = {"driver": "file", "filename": path, "node-name": file_layer}
    if disk.kind != "nvram":
        file_options["discard"] = "unmap"
    return _blockdevs(file_options, {"driver": disk.format, "file": file_layer, "node-name": node})


def _firmware(spec: VMSpec, paths: VMPaths, firmware_code: str | None) -> tuple[list[str], str]:
    """UEFI: the read-only OVMF code and the VM's own variable store, as the machine's two flash devices."""
    if spec.firmware != "uefi":
        return [], ""
    if not firmware_code:
        raise ValueError("firmware_code is required for firmware uefi")
    nvram = spec.nvram
    argv = _blockdevs({"driver": "file", "filename": firmware_code, "node-name": f"{FIRMWARE_CODE_NODE}-file",
                       "read-only": True},
                      {"driver": "raw", "file": f"{FIRMWARE_CODE_NODE}-file", "node-name": FIRMWARE_CODE_NODE,
                       "read-only": True})
    argv += disk_nodes(nvram, paths.disk(nvram))
    return argv, f",pflash0={FIRMWARE_CODE_NODE},pflash1={node_name(nvram.name)}"


def _nic(spec: VMSpec, nic: Nic, slot: int, bus: str, accel: str) -> list[str]:
    netdev = f"tap,id={netdev_id(nic.name)},ifname={tap_name(spec.name, nic.name)},script=no,downscript=no"
    device: dict[str, Any] = {"driver": nic.model, "id": nic_id(nic.name), "netdev": netdev_id(nic.name),
                              "mac": nic.mac, "bus": bus, "addr": hex(slot), "romfile": ""}
    if nic.virtio and accel == "kvm":
        netdev += ",vhost=on"
    if nic.queues > 1:
        netdev += f",queues={nic.queues}"
        device.update(mq=True, vectors=2 * nic.queues + 2)
    if nic.mtu is not None:
        device["host_mtu"] = nic.mtu
    return ["-netdev", netdev, "-device", _json(device)]


def _cdrom(spec: VMSpec) -> list[str]:
    file_layer, node = file_node(CDROM), node_name(CDROM)
    return _blockdevs({"driver": "file", "filename": spec.cdrom, "node-name": file_layer, "read-only": True},
                      {"driver": "raw", "file": file_layer, "node-name": node, "read-only": True}) + \
        ["-device", _json({"driver": "ide-cd", "drive": node, "id": device_id(CDROM), "bus": "ide.1", "unit": 0})]


def _extras(spec: VMSpec, paths: VMPaths, bus: str) -> list[str]:
    argv: list[str] = []
    if spec.rng:
        argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom",
                 "-device", _json({"driver": "virtio-rng-pci", "rng": "rng0", "id": "rng", "bus": bus,
                                   "addr": hex(RNG_SLOT)})]
    if spec.guest_agent:
        argv += ["-chardev", _socket_chardev("qga0", paths.guest_agent),
                 "-device", _json({"driver": "virtio-serial-pci", "id": "vser0", "bus": bus, "addr": hex(SERIAL_SLOT)}),
                 "-device", _json({"driver": "virtserialport", "bus": "vser0.0", "nr": 1, "chardev": "qga0",
                                   "id": "qga0", "name": GUEST_AGENT_PORT})]
    return argv


def build_argv(spec: VMSpec, paths: VMPaths, binary: str, machine: str, accel: str, incoming: bool = False,
               firmware_code: str | None = None) -> list[str]:
    """The QEMU command line for this VM on this host.

    `machine` must be a versioned machine type and `accel` a concrete accelerator (kvm or tcg): both are pinned by
    whoever starts the VM. `firmware_code` is this host's OVMF code file, for firmware uefi.
    """
    flash, machine_flash = _firmware(spec, paths, firmware_code)
    bus = root_bus(machine)
    argv = [
        binary,
        "-name", f"{spec.name},debug-threads=on",
        "-machine", machine + machine_flash,
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
        *flash,
    ]
    if spec.kernel:
        argv += ["-kernel", spec.kernel]
    if spec.initrd:
        argv += ["-initrd", spec.initrd]
    if spec.append:
        argv += ["-append", spec.append]
    for slot, disk in enumerate(spec.disks, start=FIRST_DISK_SLOT):
        argv += disk_nodes(disk, paths.disk(disk))
        argv += ["-device", _json({"driver": "virtio-blk-pci", "drive": node_name(disk.name),
                                   "id": device_id(disk.name), "bus": bus, "addr": hex(slot)})]
    if spec.cdrom:
        argv += _cdrom(spec)
    for slot, nic in enumerate(spec.nics, start=FIRST_NIC_SLOT):
        argv += _nic(spec, nic, slot, bus, accel)
    argv += _extras(spec, paths, bus)
    if incoming:
        # -S: the VM stays paused once it has arrived, until the target has recorded that it runs there.
        argv += ["-incoming", "defer", "-S"]
    return argv
