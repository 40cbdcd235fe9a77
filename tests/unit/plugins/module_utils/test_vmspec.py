from __future__ import annotations

import json

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qemuargv import build_argv, root_bus
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import Disk, SpecError, check_vm_name, parse_spec

QEMU = "/usr/bin/qemu-system-x86_64"  # build_argv only writes it into the command line


def raw_spec(**overrides):
    spec = {"memory_mb": 64, "vcpus": 1, "machine": "q35", "cpu_model": "qemu64"}
    spec.update(overrides)
    return {key: value for key, value in spec.items() if value is not _DROP}


_DROP = object()


def paths(tmp_path, vm="vm1"):
    return VMPaths(vm, str(tmp_path / "images"), str(tmp_path / "run"), str(tmp_path / "state"))


def option_values(argv, option):
    """Every value that follows `option` in argv, in order."""
    return [argv[i + 1] for i, item in enumerate(argv[:-1]) if item == option]


# -- parse_spec ------------------------------------------------------------------------------

def test_parse_spec_minimal_gives_defaults():
    spec = parse_spec("vm1", raw_spec())
    assert spec.name == "vm1"
    assert spec.memory_mb == 64 and spec.vcpus == 1
    assert spec.machine == "q35" and spec.cpu_model == "qemu64"
    assert spec.accel == "auto"
    assert spec.kernel is None and spec.initrd is None and spec.append is None
    assert spec.disks == ()


def test_parse_spec_full_entry():
    spec = parse_spec("web-01", raw_spec(
        memory_mb=256, vcpus=2, accel="tcg", kernel="/boot/vmlinuz", initrd="/boot/initrd.img",
        append="console=ttyS0",
        disks=[{"name": "root", "size_mb": 64}, {"name": "data_1", "size_mb": 8, "format": "raw", "shared": True}]))
    assert spec.accel == "tcg"
    assert spec.kernel == "/boot/vmlinuz" and spec.initrd == "/boot/initrd.img" and spec.append == "console=ttyS0"
    assert spec.disks == (Disk("root", 64, "qcow2", False), Disk("data_1", 8, "raw", True))
    assert spec.local_disks == (Disk("root", 64, "qcow2", False),)


@pytest.mark.parametrize("key", ["memory_mb", "vcpus", "machine", "cpu_model"])
def test_parse_spec_requires_key(key):
    with pytest.raises(SpecError, match=f"{key} is required"):
        parse_spec("vm1", raw_spec(**{key: _DROP}))


@pytest.mark.parametrize("value", [0, -64, True, False, "lots", "64M", 64.5, 64.0, [64], None, ""])
def test_parse_spec_rejects_bad_memory(value):
    with pytest.raises(SpecError, match="memory_mb"):
        parse_spec("vm1", raw_spec(memory_mb=value))


def test_parse_spec_numeric_string_memory_is_coerced_to_int():
    # Inventory values often arrive as strings; a plain decimal string is accepted and made an int.
    spec = parse_spec("vm1", raw_spec(memory_mb="128"))
    assert spec.memory_mb == 128 and isinstance(spec.memory_mb, int)


@pytest.mark.parametrize("value", [0, -1, True, "two"])
def test_parse_spec_rejects_bad_vcpus(value):
    with pytest.raises(SpecError, match="vcpus"):
        parse_spec("vm1", raw_spec(vcpus=value))


@pytest.mark.parametrize("accel", ["hvf", "KVM", "", None, True])
def test_parse_spec_rejects_bad_accel(accel):
    with pytest.raises(SpecError, match="accel must be one of auto, kvm, tcg"):
        parse_spec("vm1", raw_spec(accel=accel))


@pytest.mark.parametrize("accel", ["auto", "kvm", "tcg"])
def test_parse_spec_accepts_known_accel(accel):
    assert parse_spec("vm1", raw_spec(accel=accel)).accel == accel


def test_parse_spec_rejects_unknown_keys():
    with pytest.raises(SpecError, match=r"unknown keys \['memory', 'nic'\]"):
        parse_spec("vm1", raw_spec(memory=64, nic=[]))


def test_parse_spec_rejects_non_dict_entry():
    with pytest.raises(SpecError, match="must be a dict"):
        parse_spec("vm1", ["memory_mb", 64])


@pytest.mark.parametrize("field", ["machine", "cpu_model"])
@pytest.mark.parametrize("value", ["pc,accel=kvm", "   ", 35])
def test_parse_spec_rejects_bad_machine_and_cpu_text(field, value):
    with pytest.raises(SpecError, match=field):
        parse_spec("vm1", raw_spec(**{field: value}))


@pytest.mark.parametrize("value", ["help", "?", "HELP", " help "])
def test_a_cpu_model_asking_for_help_is_refused_with_what_to_write(value):
    with pytest.raises(SpecError, match=r"asks QEMU for its list of models and is not one: write the name of a "
                                        r"model, such as Haswell-v4"):
        parse_spec("vm1", raw_spec(cpu_model=value))


@pytest.mark.parametrize("value", ["Haswell,+vmx", "-cpu", "qemu64 ", "a/b", "x" * 65, "?help", True])
def test_a_cpu_model_that_is_no_model_name_is_refused(value):
    with pytest.raises(SpecError, match="is not the name of a CPU model"):
        parse_spec("vm1", raw_spec(cpu_model=value))


@pytest.mark.parametrize("value", ["Haswell-v4", "qemu64", "Opteron_G5", "EPYC-Rome-v2", "486", "max"])
def test_cpu_model_names_as_qemu_lists_them_are_accepted(value):
    assert parse_spec("vm1", raw_spec(cpu_model=value)).cpu_model == value


@pytest.mark.parametrize("name", ["root", "data_1", "a", "d" + "x" * 15])
def test_parse_spec_accepts_disk_names(name):
    spec = parse_spec("vm1", raw_spec(disks=[{"name": name, "size_mb": 8}]))
    assert spec.disks[0].name == name


@pytest.mark.parametrize("name", ["Root", "1data", "_x", "da-ta", "da.ta", "a/b", "", None, 7,
                                  "d" + "x" * 16])
def test_parse_spec_rejects_disk_names(name):
    with pytest.raises(SpecError, match=r"disks\[0\]\.name"):
        parse_spec("vm1", raw_spec(disks=[{"name": name, "size_mb": 8}]))


def test_parse_spec_rejects_disk_name_with_trailing_newline():
    # Regression: DISK_NAME ends in '$', which re.match also lets match before a trailing newline; "root\n"
    # would become node-name "disk-root\n", which QEMU rejects only when the VM starts. fullmatch closes it.
    try:
        spec = parse_spec("vm1", raw_spec(disks=[{"name": "root\n", "size_mb": 8}]))
    except SpecError:
        return
    pytest.fail(f"parse_spec accepted the disk name {spec.disks[0].name!r} (trailing newline)")


def test_parse_spec_rejects_duplicate_disk_names():
    with pytest.raises(SpecError, match="disk names must be unique"):
        parse_spec("vm1", raw_spec(disks=[{"name": "root", "size_mb": 8}, {"name": "root", "size_mb": 16}]))


def test_parse_spec_rejects_non_dict_disk_and_unknown_disk_keys():
    with pytest.raises(SpecError, match=r"disks\[0\] must be a dict"):
        parse_spec("vm1", raw_spec(disks=["root"]))
    with pytest.raises(SpecError, match=r"disks\[1\] has unknown keys \['size'\]"):
        parse_spec("vm1", raw_spec(disks=[{"name": "a", "size_mb": 8}, {"name": "b", "size": 8}]))


@pytest.mark.parametrize("size", [0, -8, True, "big", None])
def test_parse_spec_rejects_bad_disk_size(size):
    with pytest.raises(SpecError, match="disk root: size_mb"):
        parse_spec("vm1", raw_spec(disks=[{"name": "root", "size_mb": size}]))


@pytest.mark.parametrize("disk_format", ["vmdk", "QCOW2", "", None])
def test_parse_spec_rejects_bad_disk_format(disk_format):
    with pytest.raises(SpecError, match="format must be one of qcow2, raw"):
        parse_spec("vm1", raw_spec(disks=[{"name": "root", "size_mb": 8, "format": disk_format}]))


@pytest.mark.parametrize("shared", ["yes", 1, 0, None, "true"])
def test_parse_spec_rejects_non_bool_shared(shared):
    with pytest.raises(SpecError, match="shared must be true or false"):
        parse_spec("vm1", raw_spec(disks=[{"name": "root", "size_mb": 8, "shared": shared}]))


@pytest.mark.parametrize("key", ["kernel", "initrd"])
@pytest.mark.parametrize("value", ["boot/vmlinuz", "vmlinuz", "./vmlinuz", 42])
def test_parse_spec_rejects_relative_kernel_and_initrd(key, value):
    extra = {"kernel": "/boot/vmlinuz"} if key == "initrd" else {}
    with pytest.raises(SpecError, match=f"{key} must be an absolute path"):
        parse_spec("vm1", raw_spec(**extra, **{key: value}))


def test_parse_spec_rejects_initrd_without_kernel():
    with pytest.raises(SpecError, match="initrd needs kernel"):
        parse_spec("vm1", raw_spec(initrd="/boot/initrd.img"))


def test_parse_spec_checks_the_vm_name():
    with pytest.raises(SpecError, match="invalid VM name"):
        parse_spec("../etc", raw_spec())


# -- check_vm_name ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vm1", "web-01", "db_2.prod", "A", "0vm", "x" * 63, "a.b-c_d"])
def test_check_vm_name_accepts(name):
    assert check_vm_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "/vm", "..", "a..b", "vm..", ".hidden", "-vm", "_vm",
                                  "x" * 64, "vm 1", "vm:1", "vm\x00", None, 12])
def test_check_vm_name_rejects(name):
    with pytest.raises(SpecError, match="invalid VM name"):
        check_vm_name(name)


@pytest.mark.parametrize("name", ["web1-root.qcow2", "web1-nvram.raw", "x.raw"])
def test_a_vm_name_that_ends_like_a_disk_image_is_refused(name):
    """With the default directories a VM's directory sits beside other VMs' images: VM web1-root.qcow2 would be
    VM web1's image."""
    with pytest.raises(SpecError, match="it ends like a disk image"):
        check_vm_name(name)


def test_check_vm_name_rejects_trailing_newline():
    # Regression: VM_NAME ends in '$', which re.match also lets match before a trailing newline, so "vm1\n"
    # would pass and end up in file names, socket paths and QEMU's -name. fullmatch closes it.
    try:
        check_vm_name("vm1\n")
    except SpecError:
        return
    pytest.fail("check_vm_name accepted 'vm1\\n' (a name with a trailing newline)")


# -- build_argv ------------------------------------------------------------------------------

@pytest.fixture
def two_disk_spec():
    return parse_spec("vm1", raw_spec(
        kernel="/boot/vmlinuz", initrd="/boot/initrd.img", append="console=ttyS0 quiet",
        disks=[{"name": "root", "size_mb": 64}, {"name": "data", "size_mb": 8, "format": "raw"},
               {"name": "logs", "size_mb": 8, "shared": True}]))


def test_build_argv_is_deterministic(tmp_path, two_disk_spec):
    first = build_argv(two_disk_spec, paths(tmp_path), QEMU, "pc-q35-10.0", "tcg")
    again = build_argv(parse_spec("vm1", raw_spec(
        append="console=ttyS0 quiet", initrd="/boot/initrd.img", kernel="/boot/vmlinuz",
        disks=[{"size_mb": 64, "name": "root"}, {"format": "raw", "name": "data", "size_mb": 8},
               {"shared": True, "size_mb": 8, "name": "logs"}])),
        paths(tmp_path), QEMU, "pc-q35-10.0", "tcg")
    assert first == again
    assert first == build_argv(two_disk_spec, paths(tmp_path), QEMU, "pc-q35-10.0", "tcg")
    assert all(isinstance(item, str) for item in first)
    assert first[0] == QEMU


def test_build_argv_pins_the_given_machine_and_accel(tmp_path):
    spec = parse_spec("vm1", raw_spec(machine="q35", accel="auto"))
    argv = build_argv(spec, paths(tmp_path), QEMU, "pc-q35-9.2", "tcg")
    assert option_values(argv, "-machine") == ["pc-q35-9.2"]
    assert option_values(argv, "-accel") == ["tcg"]
    assert option_values(argv, "-cpu") == ["qemu64"]
    assert option_values(argv, "-m") == ["64M"]
    assert option_values(argv, "-smp") == ["1"]
    argv = build_argv(spec, paths(tmp_path), QEMU, "pc-i440fx-10.0", "kvm")
    assert option_values(argv, "-machine") == ["pc-i440fx-10.0"]
    assert option_values(argv, "-accel") == ["kvm"]


def test_build_argv_monitors_serial_and_pidfile(tmp_path):
    vm_paths = paths(tmp_path)
    argv = build_argv(parse_spec("vm1", raw_spec()), vm_paths, QEMU, "pc-q35-10.0", "tcg")
    chardevs = option_values(argv, "-chardev")
    assert f"socket,id=qmp,path={vm_paths.qmp},server=on,wait=off" in chardevs
    assert f"socket,id=qmp-job,path={vm_paths.job_qmp},server=on,wait=off" in chardevs
    assert f"socket,id=serial0,path={vm_paths.serial},server=on,wait=off" in chardevs
    assert option_values(argv, "-mon") == ["chardev=qmp,mode=control", "chardev=qmp-job,mode=control"]
    assert option_values(argv, "-pidfile") == [vm_paths.pidfile]
    assert "-daemonize" in argv and "-nodefaults" in argv


@pytest.mark.parametrize("machine,bus", [("pc-q35-10.0", "pcie.0"), ("q35", "pcie.0"), ("pc-q35-2.12", "pcie.0"),
                                         ("pc-i440fx-10.0", "pci.0"), ("pc", "pci.0")])
def test_build_argv_root_bus_follows_the_machine(tmp_path, two_disk_spec, machine, bus):
    assert root_bus(machine) == bus
    devices = [json.loads(item) for item in option_values(
        build_argv(two_disk_spec, paths(tmp_path), QEMU, machine, "tcg"), "-device")]
    assert devices and {device["bus"] for device in devices} == {bus}


def test_build_argv_disks_get_fixed_addresses_in_order(tmp_path, two_disk_spec):
    vm_paths = paths(tmp_path)
    argv = build_argv(two_disk_spec, vm_paths, QEMU, "pc-q35-10.0", "tcg")
    devices = [json.loads(item) for item in option_values(argv, "-device")]
    assert [(d["id"], d["drive"], d["addr"], d["driver"]) for d in devices] == [
        ("vd-root", "disk-root", "0x8", "virtio-blk-pci"),
        ("vd-data", "disk-data", "0x9", "virtio-blk-pci"),
        ("vd-logs", "disk-logs", "0xa", "virtio-blk-pci"),
    ]
    blockdevs = [json.loads(item) for item in option_values(argv, "-blockdev")]
    assert blockdevs == [
        {"driver": "file", "filename": vm_paths.disk(two_disk_spec.disks[0]), "node-name": "file-root",
         "discard": "unmap"},
        {"driver": "qcow2", "file": "file-root", "node-name": "disk-root"},
        {"driver": "file", "filename": vm_paths.disk(two_disk_spec.disks[1]), "node-name": "file-data",
         "discard": "unmap"},
        {"driver": "raw", "file": "file-data", "node-name": "disk-data"},
        {"driver": "file", "filename": vm_paths.disk(two_disk_spec.disks[2]), "node-name": "file-logs",
         "discard": "unmap"},
        {"driver": "qcow2", "file": "file-logs", "node-name": "disk-logs"},
    ]
    # Removing the first disk shifts the others: the address is the position in the spec.
    spec = parse_spec("vm1", raw_spec(disks=[{"name": "data", "size_mb": 8}]))
    device = json.loads(option_values(build_argv(spec, vm_paths, QEMU, "pc-q35-10.0", "tcg"), "-device")[0])
    assert device["addr"] == "0x8"


def test_build_argv_incoming_defer_only_for_incoming(tmp_path, two_disk_spec):
    normal = build_argv(two_disk_spec, paths(tmp_path), QEMU, "pc-q35-10.0", "tcg")
    incoming = build_argv(two_disk_spec, paths(tmp_path), QEMU, "pc-q35-10.0", "tcg", incoming=True)
    assert "-incoming" not in normal
    assert option_values(incoming, "-incoming") == ["defer"]
    assert incoming[:len(normal)] == normal and incoming[len(normal):] == ["-incoming", "defer", "-S"]


def test_build_argv_passes_kernel_initrd_append(tmp_path, two_disk_spec):
    argv = build_argv(two_disk_spec, paths(tmp_path), QEMU, "pc-q35-10.0", "tcg")
    assert option_values(argv, "-kernel") == ["/boot/vmlinuz"]
    assert option_values(argv, "-initrd") == ["/boot/initrd.img"]
    assert option_values(argv, "-append") == ["console=ttyS0 quiet"]
    bare = build_argv(parse_spec("vm1", raw_spec()), paths(tmp_path), QEMU, "pc-q35-10.0", "tcg")
    assert not {"-kernel", "-initrd", "-append", "-blockdev", "-device"} & set(bare)
