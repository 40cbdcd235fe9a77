from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import process_alive
from ansible_collections.livemig.qemu.plugins.module_utils._qemuargv import build_argv
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import parse_spec

QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"


def raw_spec(**overrides):
    return {"memory_mb": 64, "vcpus": 1, "machine": "q35", "cpu_model": "qemu64", **overrides}


def paths(tmp_path, vm="vm1"):
    return VMPaths(vm, str(tmp_path / "images"), str(tmp_path / "run"), str(tmp_path / "state"))


# -- a real QEMU from build_argv -------------------------------------------------------------

def versioned_q35() -> str:
    listing = subprocess.run([QEMU, "-machine", "help"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        if line.startswith("q35 ") and "alias of" in line:
            return line.rsplit("alias of", 1)[1].strip(" )")
    pytest.fail(f"no q35 alias in `{QEMU} -machine help`")


def test_build_argv_starts_a_real_qemu(tmp_path):
    machine = versioned_q35()
    assert machine.startswith("pc-q35-")
    spec = parse_spec("vm1", raw_spec(memory_mb=64, cpu_model="qemu64", accel="tcg",
                                      disks=[{"name": "root", "size_mb": 8}]))
    vm_paths = paths(tmp_path)
    os.makedirs(vm_paths.image_dir)
    os.makedirs(vm_paths.vm_run_dir)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", vm_paths.disk(spec.disks[0]), "8M"], check=True)
    argv = build_argv(spec, vm_paths, QEMU, machine, "tcg")
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False)
    pid = None
    try:
        assert result.returncode == 0, result.stderr
        with open(vm_paths.pidfile, encoding="ascii") as handle:
            pid = int(handle.read().strip())
        assert process_alive(pid)
        for socket_path in vm_paths.sockets:
            assert os.path.exists(socket_path), socket_path
        with QMPSession(vm_paths.qmp, connect_timeout=5) as session:
            assert session.execute("query-status")["status"] == "running"
            assert session.execute("qom-get", {"path": "/machine", "property": "type"}) == f"{machine}-machine"
            assert session.execute("query-kvm")["enabled"] is False
            blocks = session.execute("query-block")
            disks = [b for b in blocks if b.get("inserted", {}).get("node-name") == "disk-root"]
            assert len(disks) == 1, blocks
            assert disks[0]["qdev"].split("/")[3] == "vd-root"
            assert disks[0]["inserted"]["file"] == vm_paths.disk(spec.disks[0])
            slots = {device.get("qdev_id"): (bus["bus"], device["slot"])
                     for bus in session.execute("query-pci") for device in bus["devices"]}
            assert slots["vd-root"] == (0, 8)
            session.execute("quit")
        deadline = time.monotonic() + 10
        while process_alive(pid):
            assert time.monotonic() < deadline, "QEMU did not exit after quit"
            time.sleep(0.02)
    finally:
        if pid is not None and process_alive(pid):
            os.kill(pid, signal.SIGKILL)
