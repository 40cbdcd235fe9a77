"""A live move in the role's two calls, against real QEMUs: the target's qemu_vm starts the incoming QEMU, exports
its fresh disk and listens; the source's qemu_migrate mirrors the disk, migrates and switches over. Two "hosts" are
two directory sets on this machine; everything goes over 127.0.0.1."""
from __future__ import annotations

import subprocess

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession

SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg",
        "disks": [{"name": "root", "size_mb": 64, "format": "qcow2"}]}
MIB = 1 << 20
GUEST_DISK = "/machine/peripheral/vd-root/virtio-backend"  # the qdev that holds the disk's block backend


@pytest.fixture
def hosts(tmp_path):
    if conftest.QEMU is None:
        pytest.fail("qemu-system-x86_64 is missing: run scripts/setup.sh")
    dirs = {side: {"run_dir": str(tmp_path / side / "run"), "image_dir": str(tmp_path / side / "images")}
            for side in ("src", "dst")}

    def module(name, side, **args):
        return conftest.run_module(name, tmp_path, name="vm1", **dirs[side], **args)

    yield module, dirs
    for side in ("dst", "src"):
        module("qemu_vm", side, state="absent")


def start_target(module, machine, **ends):
    return module("qemu_vm", "dst", state="incoming", spec=SPEC, migration_target=True, migration_id="move-1",
                  machine=machine, accel="tcg", disk_sizes={"root": 64 * MIB}, **ends)


def test_one_target_call_and_one_source_job_move_the_vm_with_its_disk(hosts):
    module, dirs = hosts
    source = module("qemu_vm", "src", spec=SPEC, claim=True)
    with QMPSession(VMPaths.on_host("vm1", **dirs["src"]).qmp) as session:  # data for the mirror to carry
        said = session.execute("human-monitor-command", {"command-line": f'qemu-io -d {GUEST_DISK} "write -P 0x5a 1M 8M"'})
        assert "error" not in said.lower(), said  # the pattern check on the target's image below proves the write
    ends = {"nbd_export": {"address": "127.0.0.1", "disks": ["root"]}, "listen": {"address": "127.0.0.1"}}
    target = start_target(module, source["machine"], **ends)
    assert target["changed"] is True and target["status"] == "inmigrate", target
    assert target["nbd"]["host"] == "127.0.0.1" and set(target["nbd"]["exports"]) == {"root"}, target
    assert target["incoming"]["uri"].startswith("tcp:127.0.0.1:") and target["incoming"]["recovery_uri"], target

    again = start_target(module, source["machine"], **ends)
    assert again["changed"] is False, again
    assert (again["nbd"], again["incoming"]["uri"]) == (target["nbd"], target["incoming"]["uri"])

    nbd = target["nbd"]
    moved = module("qemu_migrate", "src", uri=target["incoming"]["uri"], target_name="hv2", migration_id="move-1",
                   disks=["root"], mirror={"nbd_host": nbd["host"], "nbd_port": nbd["port"],
                                           "exports": nbd["exports"]})
    assert moved.get("failed") is not True, moved
    assert moved["statistics"]["status"] == "completed", moved
    assert [mirror["ready"] for mirror in moved["mirrors"]] == [True], moved["mirrors"]
    assert moved["mirror_history"] and moved["mirror_history"][-1]["disk_remaining"] == 0, moved["mirror_history"]
    watched = module("qemu_migrate_incoming", "dst", state="completed", timeout=30)
    assert watched.get("failed") is not True and watched["status"] == "running", watched

    for side in ("src", "dst"):
        module("qemu_vm", side, state="stopped", powerdown_timeout=0)
    images = [disk["path"] for disk in (source["disks"][0], target["disks"][0])]
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", *images],
                             capture_output=True, text=True, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    check = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1M 8M", images[1]],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0 and "verification failed" not in check.stdout, check.stdout


def test_a_mirror_without_an_export_for_each_disk_is_refused_before_anything_moves(hosts):
    module, _dirs = hosts
    module("qemu_vm", "src", spec=SPEC, claim=True)
    refused = module("qemu_migrate", "src", uri="tcp:127.0.0.1:9", target_name="hv2", disks=["root"],
                     mirror={"nbd_host": "127.0.0.1", "nbd_port": 9, "exports": {}})
    assert refused["failed"] is True
    assert "mirror.exports names no export for the disks root" in refused["msg"], refused
    assert module("qemu_vm", "src", spec=SPEC)["status"] == "running"
