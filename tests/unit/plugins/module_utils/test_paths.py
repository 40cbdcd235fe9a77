from __future__ import annotations

from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths, device_id, node_name
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import Disk


def test_vmpaths_derive_from_the_host_directories():
    vm_paths = VMPaths("vm1", "/srv/images", "/run/livemig", "/var/lib/livemig")
    assert vm_paths.disk(Disk("root", 8)) == "/srv/images/vm1-root.qcow2"
    assert vm_paths.disk(Disk("data", 8, "raw")) == "/srv/images/vm1-data.raw"
    assert vm_paths.qmp == "/run/livemig/vm1.qmp"
    assert vm_paths.job_qmp == "/run/livemig/vm1.job.qmp"
    assert vm_paths.serial == "/run/livemig/vm1.serial"
    assert vm_paths.pidfile == "/run/livemig/vm1.pid"
    assert vm_paths.log == "/run/livemig/vm1.log"
    assert vm_paths.record == "/var/lib/livemig/vm1.json"
    assert vm_paths.sockets == (vm_paths.qmp, vm_paths.job_qmp, vm_paths.serial)


def test_node_and_device_names():
    disk = Disk("root", 8)
    assert node_name(disk.name) == "disk-root"
    assert device_id(disk.name) == "vd-root"
