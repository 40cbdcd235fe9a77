"""A VM with every kind of device, started and stopped by qemu_vm on a real QEMU in a network namespace "host":
NICs on a bridge, UEFI, qcow2 + raw + block-device disks, a CD-ROM, virtio-rng and a guest agent channel."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import stat
import subprocess
import time

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._firmware import find_uefi
from ansible_collections.livemig.qemu.plugins.module_utils._paths import tap_name
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import process_alive
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import derived_mac

MIB = 1 << 20


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def host():
    """A network namespace with a bridge br0, standing for a hypervisor; modules run in it with `host.run`."""
    name = f"lmunit{secrets.token_hex(3)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "link", "add", "br0", "type", "bridge")
        ip("-n", name, "link", "set", "br0", "up")
        yield _Host(name)
    finally:
        ip("netns", "del", name)


class _Host:
    def __init__(self, name: str):
        self.name = name
        self.prefix = ("ip", "netns", "exec", name)

    def links(self, *args: str) -> list[dict]:
        return json.loads(ip("-n", self.name, "-j", "-d", "link", "show", *args).stdout or "[]")

    def has_link(self, name: str) -> bool:
        return ip("-n", self.name, "link", "show", "dev", name, check=False).returncode == 0


def dirs(tmp_path) -> dict:
    return {"name": "vm1", "host": {"run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images")}}


def full_spec(block_device: str, cdrom: str) -> dict:
    return {"memory_mb": 128, "vcpus": 1, "machine": "q35", "cpu_model": "qemu64", "accel": "tcg",
            "firmware": "uefi", "rng": True, "guest_agent": True, "cdrom": cdrom,
            "disks": [{"name": "root", "size_mb": 16}, {"name": "data", "size_mb": 8, "format": "raw"},
                      {"name": "blk", "size_mb": 8, "path": block_device}],
            "nics": [{"name": "lan", "bridge": "br0"},
                     {"name": "san", "bridge": "br0", "mac": "52:54:00:AB:CD:EF", "mtu": 1400, "queues": 2}]}


def test_a_vm_with_every_kind_of_device_starts_stops_and_goes(tmp_path, host, loop_device):
    uefi = find_uefi("pc-q35-10.0")
    assert uefi["found"], uefi["reason"]
    device = loop_device(16)
    cdrom = tmp_path / "tools.iso"
    cdrom.write_bytes(os.urandom(MIB))
    spec = full_spec(device, str(cdrom))
    started = conftest.run_module("qemu_vm", tmp_path, prefix=host.prefix, spec=spec, claim=True, **dirs(tmp_path))
    assert started.get("failed") is not True, started["msg"]
    taps = {"lan": tap_name("vm1", "lan"), "san": tap_name("vm1", "san")}
    try:
        assert started["status"] == "running" and started["taps"] == taps
        # Each tap is on this host's bridge, up, with the NIC's MTU, and not the guest's MAC.
        on_bridge = {link["ifname"]: link for link in host.links("master", "br0")}
        assert set(on_bridge) == set(taps.values())
        assert on_bridge[taps["san"]]["mtu"] == 1400 and "UP" in on_bridge[taps["san"]]["flags"]
        assert on_bridge[taps["san"]]["address"] == "fe:54:00:ab:cd:ef"
        record = json.loads((tmp_path / "images" / "vm1" / "record.json").read_text())
        assert record["volatile"]["taps"] == taps and record["owner"] is True
        nvram = tmp_path / "images" / "vm1-nvram.raw"
        assert nvram.stat().st_size == uefi["vars_size"] and stat.S_IMODE(nvram.stat().st_mode) == 0o600
        with QMPSession(str(tmp_path / "run" / "vm1" / "qmp")) as session:
            macs = {nic: session.execute("query-rx-filter", {"name": f"net-{nic}"})[0]["main-mac"]
                    for nic in ("lan", "san")}
            assert macs == {"lan": derived_mac("vm1", "lan"), "san": "52:54:00:ab:cd:ef"}
            slots = {dev["qdev_id"]: dev["slot"] for bus in session.execute("query-pci") for dev in bus["devices"]}
            assert {key: slots[key] for key in ("rng", "vser0", "vd-root", "vd-data", "vd-blk", "net-lan",
                                                "net-san")} == {"rng": 6, "vser0": 7, "vd-root": 8, "vd-data": 9,
                                                                "vd-blk": 10, "net-lan": 16, "net-san": 17}
            nodes = {node["node-name"]: node for node in session.execute("query-named-block-nodes")}
            assert nodes["disk-blk"]["image"]["virtual-size"] == 8 * MIB, "the device is cut to the disk's size"
            assert nodes["disk-cdrom"]["ro"] is True and nodes["fw-code"]["ro"] is True
            assert nodes["disk-nvram"]["ro"] is False
            assert "qga0" in {chardev["label"] for chardev in session.execute("query-chardev")}
        assert os.path.exists(tmp_path / "run" / "vm1" / "qga")
        nvram_inode = nvram.stat().st_ino

        stopped = conftest.run_module("qemu_vm", tmp_path, prefix=host.prefix, state="stopped", powerdown_timeout=0,
                                      **dirs(tmp_path))
        assert stopped["changed"] is True and stopped["stopped_by"] == "quit", stopped
        assert not any(host.has_link(tap) for tap in taps.values()), "the taps went with their QEMU"
        assert json.loads((tmp_path / "images" / "vm1" / "record.json").read_text())["volatile"] == {}

        again = conftest.run_module("qemu_vm", tmp_path, prefix=host.prefix, spec=spec, **dirs(tmp_path))
        assert again["status"] == "running", again
        assert nvram.stat().st_ino == nvram_inode, "the variable store is created once, at the first start"
    finally:
        removed = conftest.run_module("qemu_vm", tmp_path, prefix=host.prefix, state="absent", spec=spec,
                                      **dirs(tmp_path))
    assert removed["changed"] is True, removed
    assert not process_alive(started["pid"])
    assert sorted(os.listdir(tmp_path / "images")) == [], "images, variable store and record gone"
    assert stat.S_ISBLK(os.stat(device).st_mode) and (tmp_path / "blk.img").exists(), "the block device stays"
    assert cdrom.exists(), "the CD-ROM image is not the VM's to delete"


def test_a_tap_that_survived_a_killed_qemu_is_removed_with_the_vm(tmp_path, host):
    spec = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg",
            "nics": [{"name": "lan", "bridge": "br0"}]}
    started = conftest.run_module("qemu_vm", tmp_path, prefix=host.prefix, spec=spec, claim=True, **dirs(tmp_path))
    assert started["status"] == "running", started
    os.kill(started["pid"], signal.SIGKILL)
    tap = tap_name("vm1", "lan")
    deadline = time.monotonic() + 10
    while host.has_link(tap):  # the kernel deletes QEMU's tap as its last fd closes
        assert time.monotonic() < deadline, "QEMU's tap outlived it"
        time.sleep(0.01)
    ip("-n", host.name, "tuntap", "add", "dev", tap, "mode", "tap")  # as if something had made it persistent
    removed = conftest.run_module("qemu_vm", tmp_path, prefix=host.prefix, state="absent", **dirs(tmp_path))
    assert removed["taps_removed"] == [tap], removed
    assert not host.has_link(tap)


def refused(tmp_path, host, spec, prefix=None):
    result = conftest.run_module("qemu_vm", tmp_path, prefix=prefix or host.prefix, spec=spec, claim=True,
                                 **dirs(tmp_path))
    assert result.get("failed") is True, result
    assert not os.path.exists(tmp_path / "run" / "vm1" / "pid") and not host.links("master", "br0")
    images = tmp_path / "images"
    assert not images.exists() or os.listdir(images) == [], "nothing created"
    return result["msg"]


BASE = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg"}


def test_a_missing_bridge_is_refused_before_anything_starts(tmp_path, host):
    msg = refused(tmp_path, host, {**BASE, "disks": [{"name": "root", "size_mb": 8}],
                                   "nics": [{"name": "lan", "bridge": "nobr"}]})
    assert "NIC lan: bridge nobr does not exist on this host: create it (the same name on every host)" in msg


def test_a_taken_tap_name_is_refused_and_left_alone(tmp_path, host):
    tap = tap_name("vm1", "lan")
    ip("-n", host.name, "tuntap", "add", "dev", tap, "mode", "tap")
    msg = refused(tmp_path, host, {**BASE, "nics": [{"name": "lan", "bridge": "br0"}]})
    assert f"NIC lan: the tap name {tap} is already taken on this host" in msg
    assert host.has_link(tap), "someone else's tap is not ours to remove"


def test_a_block_device_smaller_than_the_disk_is_refused(tmp_path, host, loop_device):
    device = loop_device(8)
    msg = refused(tmp_path, host, {**BASE, "disks": [{"name": "blk", "size_mb": 16, "path": device}]})
    assert f"disk blk: {device} has 8 MiB on this host, the disk needs 16 MiB" in msg
    msg = refused(tmp_path, host, {**BASE, "disks": [{"name": "blk", "size_mb": 4, "path": str(tmp_path / "f")}]})
    assert "does not exist on this host" in msg


def test_a_missing_cdrom_image_is_refused(tmp_path, host):
    msg = refused(tmp_path, host, {**BASE, "cdrom": str(tmp_path / "none.iso")})
    assert f"CD-ROM image {tmp_path / 'none.iso'} not found on this host" in msg


def test_uefi_on_a_host_without_ovmf_is_refused(tmp_path, host):
    """The host's firmware descriptors hidden under an empty tmpfs, in a mount namespace of the module's own."""
    hide = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            "for d in /usr/share/qemu/firmware /etc/qemu/firmware; do [ -d $d ] && mount -t tmpfs none $d; done; "
            "exec \"$@\"", "sh", *host.prefix)
    msg = refused(tmp_path, host, {**BASE, "firmware": "uefi"}, prefix=hide)
    assert "firmware uefi: no UEFI firmware without Secure Boot for pc-i440fx-" in msg
    assert "install the OVMF firmware (Debian and Ubuntu: package ovmf" in msg


def test_the_host_check_tells_each_problem_and_the_cdroms_identity(tmp_path, host, loop_device):
    device = loop_device(4)
    cdrom = tmp_path / "tools.iso"
    cdrom.write_bytes(b"livemig" * 1000)
    tap = tap_name("vm1", "wan")
    ip("-n", host.name, "tuntap", "add", "dev", tap, "mode", "tap")
    spec = {**BASE, "firmware": "uefi", "cdrom": str(cdrom),
            "disks": [{"name": "root", "size_mb": 8}, {"name": "blk", "size_mb": 8, "path": device}],
            "nics": [{"name": "lan", "bridge": "nobr"}, {"name": "wan", "bridge": "br0", "mtu": 9000}]}
    checked = conftest.run_module("qemu_host_check", tmp_path, prefix=host.prefix, spec=spec, accel="tcg",
                                  machine="pc-i440fx-10.0", **dirs(tmp_path))
    assert checked["changed"] is False and checked["runs_here"] is False, checked
    assert checked["problems"] == [
        f"disk blk: {device} has 4 MiB on this host, the disk needs 8 MiB",
        "NIC lan: bridge nobr does not exist on this host: create it (the same name on every host)",
        "NIC wan: bridge br0 has MTU 1500 on this host, less than the NIC's 9000",
        f"NIC wan: the tap name {tap} is already taken on this host (by a device no QEMU of this VM owns): remove "
        "it or find who made it"]
    assert checked["cdrom"] == {"path": str(cdrom), "exists": True, "size": 7000,
                                "sha256": hashlib.sha256(cdrom.read_bytes()).hexdigest()}
    assert checked["firmware"]["found"] is True and checked["firmware"]["vars_size"] > 0
    assert checked["volumes"]["root"] == {"kind": "file", "path": str(tmp_path / "images" / "vm1-root.qcow2"),
                                          "shared": False, "exists": False}
    assert checked["volumes"]["nvram"]["kind"] == "nvram"
    assert checked["room"]["image_dir"]["free"] > 0


def test_a_uefi_migration_target_gets_an_empty_variable_store_of_the_templates_size(tmp_path, host):
    spec = {**BASE, "machine": "q35", "firmware": "uefi", "nics": [{"name": "lan", "bridge": "br0"}]}
    incoming = conftest.run_module("qemu_vm", tmp_path, prefix=host.prefix, state="incoming", spec=spec,
                                   migration_target=True, machine="pc-q35-10.0", accel="tcg", **dirs(tmp_path))
    try:
        assert incoming["status"] == "inmigrate", incoming
        nvram = tmp_path / "images" / "vm1-nvram.raw"
        assert nvram.stat().st_size == find_uefi("pc-q35-10.0")["vars_size"]
        assert host.links("master", "br0")[0]["ifname"] == tap_name("vm1", "lan"), "its tap waits on the bridge"
    finally:
        conftest.run_module("qemu_vm", tmp_path, prefix=host.prefix, state="absent", spec=spec, **dirs(tmp_path))
    assert not host.has_link(tap_name("vm1", "lan")) and os.listdir(tmp_path / "images") == []
