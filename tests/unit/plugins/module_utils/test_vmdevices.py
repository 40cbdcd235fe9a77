"""The devices of a real VM in its spec and on its command line: NICs, UEFI, block devices, CD-ROM, rng, agent."""
from __future__ import annotations

import json

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths, tap_name
from ansible_collections.livemig.qemu.plugins.module_utils._qemuargv import build_argv
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import SpecError, derived_mac, parse_spec

QEMU = "/usr/bin/qemu-system-x86_64"
CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"


def spec(**overrides):
    return {"memory_mb": 128, "vcpus": 1, "machine": "q35", "cpu_model": "qemu64", **overrides}


def paths(tmp_path):
    return VMPaths("vm1", str(tmp_path / "images"), str(tmp_path / "run"), str(tmp_path / "state"))


def values(argv, option):
    return [argv[i + 1] for i, item in enumerate(argv[:-1]) if item == option]


def devices(argv):
    return [json.loads(item) for item in values(argv, "-device")]


# -- the spec ---------------------------------------------------------------------------------

def test_a_nic_without_a_mac_gets_one_that_is_the_same_everywhere():
    first = parse_spec("vm1", spec(nics=[{"name": "lan", "bridge": "br0"}])).nics[0]
    again = parse_spec("vm1", spec(nics=[{"name": "lan", "bridge": "br0"}])).nics[0]
    other_vm = parse_spec("vm2", spec(nics=[{"name": "lan", "bridge": "br0"}])).nics[0]
    assert first.mac == again.mac == derived_mac("vm1", "lan") != other_vm.mac
    first_byte = int(first.mac[:2], 16)
    assert first_byte & 0x02 and not first_byte & 0x01, "locally administered, unicast"
    assert (first.model, first.mtu, first.queues) == ("virtio-net-pci", None, 1)


def test_a_given_mac_is_kept_in_lower_case():
    nic = parse_spec("vm1", spec(nics=[{"name": "lan", "bridge": "br0", "mac": "52:54:00:AB:cd:01"}])).nics[0]
    assert nic.mac == "52:54:00:ab:cd:01"


@pytest.mark.parametrize("nics,message", [
    ([{"name": "a", "bridge": "br0", "mac": "52:54:00:00:00:01"}, {"name": "b", "bridge": "br1",
                                                                   "mac": "52:54:00:00:00:01"}],
     "two NICs have the MAC address 52:54:00:00:00:01"),
    ([{"name": "a", "bridge": "br0", "mac": "52:54:00:00:01"}], "mac '52:54:00:00:01' is not a MAC address"),
    ([{"name": "a", "bridge": "br0", "mac": "52-54-00-00-00-01"}], "is not a MAC address"),
    ([{"name": "a", "bridge": "br0", "mac": "01:00:5e:00:00:01"}], "is a multicast address"),
    ([{"name": "a", "bridge": "br0", "mac": "00:00:00:00:00:00"}], "is not a usable address"),
    ([{"name": "a", "bridge": "br0", "model": "ne2k"}], "unknown model 'ne2k'; use one of virtio-net-pci"),
    ([{"name": "a", "bridge": "br0", "model": "e1000", "queues": 2}], "mtu and queues need the virtio-net-pci"),
    ([{"name": "a", "bridge": "br0", "mtu": 40}], "mtu must be at least 68"),
    ([{"name": "a", "bridge": "br0", "queues": 17}], "queues must be at most 16"),
    ([{"name": "a", "bridge": "a-bridge-name-too-long"}], "must be the name of a bridge"),
    ([{"name": "a"}], "bridge None must be the name of a bridge"),
    ([{"name": "a", "bridge": "br0"}, {"name": "a", "bridge": "br0"}], "NIC names must be unique"),
    ([{"name": "a", "bridge": "br0", "vlan": 3}], r"nics\[0\] has unknown keys \['vlan'\]"),
    ([{"name": "a", "bridge": "br0"}] * 9, "at most 8 nics"),
])
def test_bad_nics_are_refused_naming_what_to_fix(nics, message):
    with pytest.raises(SpecError, match=message):
        parse_spec("vm1", spec(nics=nics))


@pytest.mark.parametrize("raw,message", [
    ({"firmware": "coreboot"}, "firmware must be one of bios, uefi"),
    ({"nvram": {"shared": True}}, "nvram is the UEFI variable store; it needs firmware: uefi"),
    ({"disks": [{"name": "nvram", "size_mb": 1}]}, "disk name 'nvram' is reserved"),
    ({"disks": [{"name": "cdrom", "size_mb": 1}]}, "disk name 'cdrom' is reserved"),
    ({"disks": [{"name": "d", "size_mb": 1, "path": "/dev/vg/d", "format": "qcow2"}]},
     "a disk on a block device \\(path\\) is raw"),
    ({"disks": [{"name": "d", "size_mb": 1, "path": "dev/vg/d"}]}, "path must be an absolute path"),
    ({"disks": [{"name": "a", "size_mb": 1, "path": "/dev/x"}, {"name": "b", "size_mb": 1, "path": "/dev/x"}]},
     "two disks use the same block device"),
    ({"disks": [{"name": f"d{i}", "size_mb": 1} for i in range(9)]}, "at most 8 disks"),
    ({"cdrom": "tools.iso"}, "cdrom must be an absolute path"),
    ({"rng": "yes"}, "rng must be true or false"),
    ({"guest_agent": 1}, "guest_agent must be true or false"),
])
def test_bad_devices_are_refused_naming_what_to_fix(raw, message):
    with pytest.raises(SpecError, match=message):
        parse_spec("vm1", spec(**raw))


def test_volumes_hold_the_disks_and_with_uefi_the_variable_store():
    disks = [{"name": "root", "size_mb": 8}, {"name": "blk", "size_mb": 4, "path": "/dev/vg/blk"}]
    bios = parse_spec("vm1", spec(disks=disks))
    assert [(v.name, v.kind, v.format) for v in bios.volumes] == [("root", "file", "qcow2"), ("blk", "block", "raw")]
    uefi = parse_spec("vm1", spec(firmware="uefi", nvram={"shared": True}, disks=[{"name": "root", "size_mb": 8}]))
    assert [(v.name, v.kind, v.format, v.shared) for v in uefi.volumes] == [
        ("root", "file", "qcow2", False), ("nvram", "nvram", "raw", True)]
    assert [v.name for v in uefi.local_volumes] == ["root"]


# -- the command line -------------------------------------------------------------------------

def test_nics_open_their_own_tap_and_keep_their_slot_and_mac(tmp_path):
    raw = spec(nics=[{"name": "lan", "bridge": "br0"},
                     {"name": "san", "bridge": "br1", "mac": "52:54:00:00:00:02", "mtu": 9000, "queues": 4},
                     {"name": "old", "bridge": "br0", "model": "e1000"}])
    argv = build_argv(parse_spec("vm1", raw), paths(tmp_path), QEMU, "pc-q35-10.0", "tcg")
    assert values(argv, "-netdev") == [
        f"tap,id=nd-lan,ifname={tap_name('vm1', 'lan')},script=no,downscript=no",
        f"tap,id=nd-san,ifname={tap_name('vm1', 'san')},script=no,downscript=no,queues=4",
        f"tap,id=nd-old,ifname={tap_name('vm1', 'old')},script=no,downscript=no"]
    assert devices(argv) == [
        {"driver": "virtio-net-pci", "id": "net-lan", "netdev": "nd-lan", "mac": derived_mac("vm1", "lan"),
         "bus": "pcie.0", "addr": "0x10", "romfile": ""},
        {"driver": "virtio-net-pci", "id": "net-san", "netdev": "nd-san", "mac": "52:54:00:00:00:02", "bus": "pcie.0",
         "addr": "0x11", "romfile": "", "mq": True, "vectors": 10, "host_mtu": 9000},
        {"driver": "e1000", "id": "net-old", "netdev": "nd-old", "mac": derived_mac("vm1", "old"), "bus": "pcie.0",
         "addr": "0x12", "romfile": ""}]
    assert len(tap_name("a-very-long-vm-name-that-goes-on", "a_long_nic_name")) <= 15
    kvm = build_argv(parse_spec("vm1", raw), paths(tmp_path), QEMU, "pc-q35-10.0", "kvm")
    assert [item.endswith(",vhost=on") or "vhost=on," in item for item in values(kvm, "-netdev")] == [True, True, False]


def test_uefi_runs_the_code_read_only_and_the_vms_own_variable_store(tmp_path):
    vm_paths = paths(tmp_path)
    parsed = parse_spec("vm1", spec(firmware="uefi"))
    argv = build_argv(parsed, vm_paths, QEMU, "pc-q35-10.0", "tcg", firmware_code=CODE)
    assert values(argv, "-machine") == ["pc-q35-10.0,pflash0=fw-code,pflash1=disk-nvram"]
    assert [json.loads(item) for item in values(argv, "-blockdev")] == [
        {"driver": "file", "filename": CODE, "node-name": "fw-code-file", "read-only": True},
        {"driver": "raw", "file": "fw-code-file", "node-name": "fw-code", "read-only": True},
        {"driver": "file", "filename": vm_paths.disk(parsed.volumes[-1]), "node-name": "file-nvram"},
        {"driver": "raw", "file": "file-nvram", "node-name": "disk-nvram"}]
    assert vm_paths.disk(parsed.volumes[-1]) == str(tmp_path / "images" / "vm1-nvram.raw")
    with pytest.raises(ValueError, match="firmware_code is required"):
        build_argv(parsed, vm_paths, QEMU, "pc-q35-10.0", "tcg")


def test_a_block_device_is_raw_cut_to_the_disks_size_and_the_cdrom_read_only(tmp_path):
    parsed = parse_spec("vm1", spec(disks=[{"name": "blk", "size_mb": 16, "path": "/dev/vg/vm1-blk"}],
                                    cdrom="/srv/iso/tools.iso", rng=True, guest_agent=True))
    vm_paths = paths(tmp_path)
    argv = build_argv(parsed, vm_paths, QEMU, "pc-i440fx-10.0", "tcg")
    assert [json.loads(item) for item in values(argv, "-blockdev")] == [
        {"driver": "host_device", "filename": "/dev/vg/vm1-blk", "node-name": "file-blk", "discard": "unmap",
         "cache": {"direct": True}, "aio": "native"},
        {"driver": "raw", "file": "file-blk", "node-name": "disk-blk", "size": 16 << 20},
        {"driver": "file", "filename": "/srv/iso/tools.iso", "node-name": "file-cdrom", "read-only": True},
        {"driver": "raw", "file": "file-cdrom", "node-name": "disk-cdrom", "read-only": True}]
    assert devices(argv) == [
        {"driver": "virtio-blk-pci", "drive": "disk-blk", "id": "vd-blk", "bus": "pci.0", "addr": "0x8"},
        {"driver": "ide-cd", "drive": "disk-cdrom", "id": "vd-cdrom", "bus": "ide.1", "unit": 0},
        {"driver": "virtio-rng-pci", "rng": "rng0", "id": "rng", "bus": "pci.0", "addr": "0x6"},
        {"driver": "virtio-serial-pci", "id": "vser0", "bus": "pci.0", "addr": "0x7"},
        {"driver": "virtserialport", "bus": "vser0.0", "nr": 1, "chardev": "qga0", "id": "qga0",
         "name": "org.qemu.guest_agent.0"}]
    assert f"socket,id=qga0,path={vm_paths.guest_agent},server=on,wait=off" in values(argv, "-chardev")
    assert values(argv, "-object") == ["rng-random,id=rng0,filename=/dev/urandom"]
