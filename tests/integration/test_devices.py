"""A VM with real devices through the documented playbooks: three disks (qcow2, raw, block device), a CD-ROM and a
NIC, moved live there and back; and each device's bad input refused before anything changes."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest
from conftest import REPO_ROOT, lab_path, migrate_and_check, watched

from ansible_collections.livemig.qemu.plugins.module_utils._paths import tap_name

MIB = 1 << 20
OWN = "/etc/livemig-blk"  # inside a lab host: that host's own directory (lab/lab-up.sh)
NIC = {"name": "lan", "bridge": "lmguest"}


def own_path(host: str, name: str) -> str:
    """Where, seen from outside the lab, a host keeps its own file `OWN/name`."""
    return os.path.join("/etc/netns", host, "livemig-blk", name)


def digest(path: str, size: int) -> str:
    """The first `size` bytes' SHA-256. QEMU writes block devices with O_DIRECT: drop the page cache first."""
    if not os.path.isfile(path):
        subprocess.run(["blockdev", "--flushbufs", path], check=True)
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(size)).hexdigest()


def fill(path: str, seed: str, size: int) -> None:
    """Write `size` bytes of a pattern only this seed gives, without extending a device, down to the disk (QEMU
    reads block devices with O_DIRECT, past the page cache)."""
    block = hashlib.sha256(seed.encode()).digest() * (MIB // 32)
    with open(path, "r+b") as handle:
        handle.write(block * (size // MIB))
        handle.flush()
        os.fsync(handle.fileno())


@pytest.fixture
def blockdev():
    """A block device per lab host under one name (lab/blockdev.sh), removed at the end."""
    names = []

    def add(name: str, size_mb: int) -> str:
        subprocess.run([os.path.join(REPO_ROOT, "lab", "blockdev.sh"), "add", name, str(size_mb)], check=True,
                       capture_output=True)
        names.append(name)
        return f"{OWN}/{name}"

    yield add
    if names:
        subprocess.run([os.path.join(REPO_ROOT, "lab", "blockdev.sh"), "remove", *names], check=True,
                       capture_output=True)


@pytest.fixture
def own_files():
    """Files a lab host has for itself at OWN/<name>; removed at the end."""
    made = []

    def put(host: str, name: str, content: bytes) -> str:
        path = own_path(host, name)
        with open(path, "wb") as handle:
            handle.write(content)
        made.append(path)
        return f"{OWN}/{name}"

    yield put
    for name in {os.path.basename(path) for path in made}:
        for host in ("hv1", "hv2"):  # a move may have copied it to the other host
            if os.path.lexists(own_path(host, name)):
                os.unlink(own_path(host, name))


def test_three_disks_a_cdrom_and_a_nic_move_live_there_and_back(lab, vm, blockdev, own_files):
    """Every disk arrives whole (the target's device held other data), the CD-ROM is never mirrored (copied once to
    the host that lacked it), each host has exactly the taps of the VMs it runs, and the source keeps nothing."""
    device = blockdev("devdisk", 64)
    iso = os.urandom(4 * MIB)
    cdrom = own_files("hv1", "tools.iso", iso)
    name = vm("light", disk_mb=256, nics=[NIC], cdrom=cdrom, rng=True,
              more_disks=({"name": "data", "size_mb": 32, "format": "raw"}, {"name": "blk", "size_mb": 48,
                                                                             "path": device}))
    lab.start(name, "hv1", prefill=False)
    data = lab_path("hv1", "images", f"{name}-data.raw")
    fill(data, "data", 32 * MIB)
    for host, seed in (("hv1", "blk"), ("hv2", "old content of hv2's device")):
        fill(os.path.realpath(own_path(host, "devdisk")), seed, 64 * MIB)
    expected = {"data": digest(data, 32 * MIB), "blk": digest(os.path.realpath(own_path("hv1", "devdisk")), 48 * MIB)}
    tap = tap_name(name, "lan")
    assert lab.taps("hv1") == {tap} and lab.taps("hv2") == set()

    with watched(lab, name, "hv1") as console:
        there = migrate_and_check(lab, console, name, "hv1", "hv2", livemig_keep_source_disks=False)
        assert lab.taps("hv1") == set() and lab.taps("hv2") == {tap}, "the source removed its tap, not the target's"
        assert [path for path in lab.files(name) if "/hv1/" in path] == [], "nothing left on the source"
        assert digest(lab_path("hv2", "images", f"{name}-data.raw"), 32 * MIB) == expected["data"]
        assert digest(os.path.realpath(own_path("hv2", "devdisk")), 48 * MIB) == expected["blk"]
        with open(own_path("hv2", "tools.iso"), "rb") as handle:
            assert handle.read() == iso, "the CD-ROM was copied to hv2, which lacked it"
        plan = "\n".join(there["plan"])
        assert f"CD-ROM {cdrom}: copy" in plan and "disk cdrom" not in plan, plan
        assert "disk blk: mirror" in plan and "disk data: mirror" in plan and "NIC lan:" in plan, plan
        assert there["announce"]["enabled"] is True and there["announce"]["announce_self"] is True
        nodes = {node["node-name"]: node for node in lab.qmp("hv2", name, "query-named-block-nodes")}
        assert nodes["disk-cdrom"]["ro"] is True and nodes["disk-blk"]["image"]["virtual-size"] == 48 * MIB

        back = migrate_and_check(lab, console, name, "hv2", "hv1", livemig_keep_source_disks=False)
        assert lab.taps("hv2") == set() and lab.taps("hv1") == {tap}
        assert "CD-ROM" in "\n".join(back["plan"]) and ": same (" in "\n".join(back["plan"])
        assert [path for path in lab.files(name) if "/hv2/" in path] == []
    lab.stop(name)
    assert lab.taps("hv1") == set(), "a stopped VM has no tap"
    assert digest(data, 32 * MIB) == expected["data"]
    assert digest(os.path.realpath(own_path("hv1", "devdisk")), 48 * MIB) == expected["blk"]
    assert os.path.exists(os.path.realpath(own_path("hv2", "devdisk"))), "a block device is never deleted"


def untouched(lab, name: str) -> dict[str, float]:
    """The VM's files and their times, but for the UEFI variable store, which the running firmware writes."""
    return {path: mtime for path, mtime in lab.files(name).items() if not path.endswith("-nvram.raw")}


def refused(lab, name: str, *fragments: str) -> None:
    """A move that must not start: it fails naming the problem, and nothing changed on either host."""
    before = untouched(lab, name)
    result = lab.migrate(name, "hv1", "hv2")
    assert result.failed, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert lab.qmp("hv1", name, "query-status")["status"] == "running"
    assert lab.pid("hv2", name) is None and lab.record("hv2", name) is None
    assert lab.taps("hv2") == set()
    assert untouched(lab, name) == before, "no file was written or touched"


def test_bad_devices_are_refused_before_anything_changes(lab, vm, blockdev, own_files):
    device = blockdev("small", 16)
    cdrom = own_files("hv1", "boot.iso", b"the source's image" * 1000)
    name = vm("idle", disk_mb=64, nics=[NIC], cdrom=cdrom,
              more_disks=({"name": "blk", "size_mb": 16, "path": device},))
    lab.start(name, "hv1", prefill=False)
    good = {key: lab.vms[name][key] for key in ("nics", "disks", "cdrom")}

    subprocess.run(["ip", "-n", "hv1", "link", "add", "lmonly1", "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "-n", "hv1", "link", "set", "lmonly1", "up"], check=True)
        lab.update_vm(name, nics=[{"name": "lan", "bridge": "lmonly1"}])
        refused(lab, name, "NIC lan: bridge lmonly1 does not exist on this host")
    finally:
        subprocess.run(["ip", "-n", "hv1", "link", "del", "lmonly1"], check=True)

    for nics, fragment in (
            ([NIC, {"name": "wan", "bridge": "lmguest", "mac": "52:54:00:00:00:07"},
              {"name": "dmz", "bridge": "lmguest", "mac": "52:54:00:00:00:07"}],
             "two NICs have the MAC address 52:54:00:00:00:07"),
            ([{**NIC, "mac": "52:54:00:zz:00:01"}], "mac '52:54:00:zz:00:01' is not a MAC address"),
            ([{**NIC, "model": "ne2k_pci"}], "unknown model 'ne2k_pci'; use one of virtio-net-pci")):
        lab.update_vm(name, nics=nics)
        refused(lab, name, fragment)
    lab.update_vm(name, **good)

    own_files("hv2", "boot.iso", b"another image" * 1000)
    refused(lab, name, f"the CD-ROM image {cdrom} differs between the hosts")
    os.unlink(own_path("hv2", "boot.iso"))

    hv2_device = os.readlink(own_path("hv2", "small"))
    tiny = lab_path("hv2", "images", "tiny-device.img")
    with open(tiny, "wb") as handle:
        handle.truncate(8 * MIB)
    loop = subprocess.run(["losetup", "--find", "--show", tiny], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        os.unlink(own_path("hv2", "small"))
        os.symlink(loop, own_path("hv2", "small"))
        refused(lab, name, f"disk blk: {device} has 8 MiB on this host, the disk needs 16 MiB")
    finally:
        os.unlink(own_path("hv2", "small"))
        os.symlink(hv2_device, own_path("hv2", "small"))
        subprocess.run(["losetup", "-d", loop], check=True)
        os.unlink(tiny)


def test_uefi_on_a_target_without_ovmf_is_refused(lab, vm):
    """hv2's own /etc/qemu/firmware hides the system's UEFI descriptor under the same name (QEMU's rule)."""
    name = vm("idle", disk_mb=64, firmware="uefi")
    lab.start(name, "hv1", prefill=False)
    hidden = os.path.join("/etc/netns/hv2/qemu/firmware", "60-edk2-x86_64.json")
    os.makedirs(os.path.dirname(hidden), exist_ok=True)
    try:
        with open(hidden, "w", encoding="utf-8") as handle:
            json.dump({"description": "no UEFI here", "interface-types": ["bios"],
                       "mapping": {"device": "memory", "filename": "/usr/share/seabios/bios.bin"},
                       "targets": [{"architecture": "x86_64", "machines": ["pc-*"]}], "features": []}, handle)
        refused(lab, name, "firmware uefi: no UEFI firmware without Secure Boot for pc-q35-", "package ovmf")
    finally:
        os.unlink(hidden)
        os.rmdir(os.path.dirname(hidden))
