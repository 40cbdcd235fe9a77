from __future__ import annotations

import itertools

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._paths import PathError, VMPaths, device_id, node_name
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import Disk


def test_vmpaths_derive_from_the_host_directories():
    vm_paths = VMPaths("vm1", "/srv/images", "/run/livemig", "/var/lib/livemig")
    assert vm_paths.disk(Disk("root", 8)) == "/srv/images/vm1-root.qcow2"
    assert vm_paths.disk(Disk("data", 8, "raw")) == "/srv/images/vm1-data.raw"
    assert vm_paths.vm_run_dir == "/run/livemig/vm1"
    assert vm_paths.qmp == "/run/livemig/vm1/qmp"
    assert vm_paths.job_qmp == "/run/livemig/vm1/job.qmp"
    assert vm_paths.serial == "/run/livemig/vm1/serial"
    assert vm_paths.guest_agent == "/run/livemig/vm1/qga"
    assert vm_paths.pidfile == "/run/livemig/vm1/pid"
    assert vm_paths.log == "/run/livemig/vm1/log"
    assert vm_paths.progress == "/run/livemig/vm1/progress.json"
    assert vm_paths.copy_pidfile("state") == "/run/livemig/vm1/copy-state.pid"
    assert vm_paths.vm_state_dir == "/var/lib/livemig/vm1"
    assert vm_paths.record == "/var/lib/livemig/vm1/record.json"
    assert vm_paths.state_file == "/var/lib/livemig/vm1/state"
    assert vm_paths.lock == "/var/lib/livemig/vm1/lock.json"
    assert vm_paths.sockets == (vm_paths.qmp, vm_paths.job_qmp, vm_paths.serial)
    assert vm_paths.private_dirs == ("/run/livemig", "/run/livemig/vm1", "/srv/images", "/var/lib/livemig",
                                     "/var/lib/livemig/vm1")


def test_the_legacy_paths_are_those_of_livemig_qemu_0_3():
    legacy = VMPaths("vm1", "/srv/images", "/run/livemig", "/var/lib/livemig").legacy
    assert (legacy.qmp, legacy.pidfile, legacy.record, legacy.state_file) == (
        "/run/livemig/vm1.qmp", "/run/livemig/vm1.pid", "/var/lib/livemig/vm1.json", "/var/lib/livemig/vm1.state")


def every_file(paths: VMPaths) -> set[str]:
    disks = [Disk("root", 8), Disk("job", 8, "raw"), Disk("nvram", 0, "raw", kind="nvram")]
    return {paths.qmp, paths.job_qmp, paths.serial, paths.guest_agent, paths.pidfile, paths.log, paths.progress,
            paths.copy_pidfile("state"), paths.copy_pidfile("root"), paths.record, paths.state_file, paths.lock,
            *(paths.disk(disk) for disk in disks)}


@pytest.mark.parametrize("directories", [("/img", "/run", "/state"), ("/run", "/run", "/run")],
                         ids=["own directories", "every directory the run directory"])
def test_vms_whose_names_differ_by_a_suffix_share_no_file(directories):
    """0.3 put `<vm>.job.qmp` beside `<vm>.qmp`: VM web1.job took web1's job monitor, web1.copy-state its copy's pid
    file, web1.progress its progress file. With a directory per VM no two VMs share a path."""
    names = ["web1", "web1.job", "web1.copy-state", "web1.progress", "web1.json", "web1.state"]
    image_dir, run_dir, state_dir = directories
    paths = {name: VMPaths.on_host(name, run_dir, image_dir, state_dir) for name in names}
    files = {name: every_file(paths[name]) for name in names}
    for first, second in itertools.permutations(names, 2):
        assert not files[first] & files[second], (first, second)
        assert not {paths[first].vm_run_dir, paths[first].vm_state_dir} & files[second], (first, second)


def test_a_socket_path_longer_than_a_unix_socket_allows_is_refused_naming_the_run_dir_and_the_vm():
    run_dir = "/run/" + "d" * 80
    name = "v" * 22  # <run_dir>/<name>/job.qmp: 85 + 1 + 22 + 8 = 116 bytes
    with pytest.raises(PathError) as error:
        VMPaths.on_host(name, run_dir)
    assert str(error.value) == (
        f"VM {name}: its socket {run_dir}/{name}/job.qmp would be 116 bytes long, more than the 107 a unix socket "
        f"path may have: give this host a shorter livemig_run_dir than {run_dir} (at most 76 bytes for this VM), "
        "or the VM a shorter name")
    assert VMPaths.on_host("v" * 13, run_dir).job_qmp.endswith("/job.qmp"), "107 bytes fit"
    with pytest.raises(PathError):
        VMPaths.on_host("v" * 14, run_dir)


def test_node_and_device_names():
    disk = Disk("root", 8)
    assert node_name(disk.name) == "disk-root"
    assert device_id(disk.name) == "vd-root"
