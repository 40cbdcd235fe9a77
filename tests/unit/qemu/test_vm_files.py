"""A VM's files on a host, with real QEMUs started by qemu_vm: a directory per VM, so that names with dots never
collide; images, state files and directories private whatever the umask; a bad CPU model stops before anything
is left behind; a VM that livemig.qemu 0.3 runs is refused, and its record taken over once that QEMU is gone."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record, process_alive
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import Disk

MB = 1 << 20
SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg"}


def host(tmp_path) -> dict[str, str]:
    return {"run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images"),
            "state_dir": str(tmp_path / "state")}


def paths_of(tmp_path, name: str) -> VMPaths:
    where = host(tmp_path)
    return VMPaths.on_host(name, where["run_dir"], where["image_dir"], where["state_dir"])


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)  # the module's process inherits it, as from an Ansible connection
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def vms(tmp_path):
    """Runs qemu_vm on one host; every VM it started is removed (state=absent) at the end."""
    started = []

    def run(name: str, **args) -> dict:
        result = conftest.run_module("qemu_vm", tmp_path, name=name, host=host(tmp_path), **args)
        if result.get("pid"):
            started.append(name)
        return result

    yield run
    for name in started:
        conftest.run_module("qemu_vm", tmp_path, name=name, host=host(tmp_path), state="absent")


def test_vms_named_web1_and_web1_job_run_side_by_side_each_with_its_own_monitors(vms, tmp_path):
    """Under 0.3, VM web1.job's monitor <run_dir>/web1.job.qmp was VM web1's job monitor."""
    web1 = vms("web1", spec=SPEC, claim=True)
    job = vms("web1.job", spec=SPEC, claim=True)
    assert web1["status"] == "running" and job["status"] == "running", (web1, job)
    assert web1["pid"] != job["pid"] and process_alive(web1["pid"]) and process_alive(job["pid"])
    assert len({*web1["sockets"].values(), *job["sockets"].values()}) == 6
    for result, name in ((web1, "web1"), (job, "web1.job")):
        for monitor in ("qmp", "job_qmp"):
            with QMPSession(result["sockets"][monitor], connect_timeout=5) as session:
                assert session.execute("query-name")["name"] == name, (name, monitor)
    assert sorted(os.listdir(tmp_path / "run")) == ["web1", "web1.job"]
    assert vms("web1.job", state="absent")["changed"] is True
    assert not process_alive(job["pid"]) and process_alive(web1["pid"]), "only web1.job stopped"
    assert sorted(os.listdir(tmp_path / "run")) == ["web1"], "web1.job's directory went with it"


def test_images_and_directories_are_private_whatever_the_umask_and_the_old_modes(vms, tmp_path):
    """The host's directories existed 0755, one image existed 0644 (made by an older version): the VM's start
    makes every directory 0700 and every image 0600, also those it creates under a umask of 022."""
    for directory in ("run", "images", "state", "run/vm1"):
        (tmp_path / directory).mkdir(mode=0o755)
        os.chmod(tmp_path / directory, 0o755)
    old = paths_of(tmp_path, "vm1").disk(Disk("old", 8))
    with umask(0o022):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", old, "8M"], check=True)
        assert mode(old) == 0o644
        spec = {**SPEC, "disks": [{"name": "old", "size_mb": 8}, {"name": "root", "size_mb": 8},
                                  {"name": "data", "size_mb": 8, "format": "raw"}]}
        started = vms("vm1", spec=spec, claim=True)
    assert started["status"] == "running", started
    paths = paths_of(tmp_path, "vm1")
    assert {directory: mode(directory) for directory in paths.private_dirs} == \
        {directory: 0o700 for directory in paths.private_dirs}
    images = sorted(os.listdir(tmp_path / "images"))
    assert images == ["vm1-data.raw", "vm1-old.qcow2", "vm1-root.qcow2"]
    assert {image: mode(tmp_path / "images" / image) for image in images} == {image: 0o600 for image in images}
    assert mode(paths.record) == 0o600 and mode(paths.qmp) == 0o600


def test_the_targets_copy_of_the_state_file_is_private(tmp_path):
    """The state file holds all of the guest's RAM: the receiving host creates it 0600 in a 0700 directory."""
    paths = paths_of(tmp_path, "vm1")
    for directory in ("run", "images", "state", "state/vm1"):
        (tmp_path / directory).mkdir(mode=0o755)
        os.chmod(tmp_path / directory, 0o755)
    with umask(0o022):
        listening = conftest.run_module("qemu_nbd_copy", tmp_path, name="vm1", host=host(tmp_path), label="state",
                                        state="listening", path=paths.state_file, format="raw", size=4 * MB,
                                        address="127.0.0.1")
    try:
        assert listening["changed"] is True, listening
        assert mode(paths.state_file) == 0o600
        assert {directory: mode(directory) for directory in paths.private_dirs} == \
            {directory: 0o700 for directory in paths.private_dirs}
        assert mode(paths.copy_pidfile("state")) == 0o600
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(listening["pid"], signal.SIGKILL)


@pytest.mark.parametrize("cpu_model", ["help", "?"])
def test_a_cpu_model_asking_for_help_fails_before_anything_is_created(vms, tmp_path, cpu_model):
    spec = {**SPEC, "cpu_model": cpu_model, "disks": [{"name": "root", "size_mb": 8}]}
    result = vms("vm1", spec=spec, claim=True)
    assert result["failed"] is True, result
    assert result["msg"].startswith(f"VM vm1: cpu_model {cpu_model!r} asks QEMU for its list of models and is not "
                                    "one: write the name of a model, such as Haswell-v4")
    assert not (tmp_path / "images").exists() and not (tmp_path / "run").exists()


def test_a_cpu_model_qemu_does_not_know_fails_with_its_reason_and_leaves_no_image(vms, tmp_path):
    spec = {**SPEC, "cpu_model": "Nehalem-v99", "disks": [{"name": "root", "size_mb": 8}]}
    result = vms("vm1", spec=spec, claim=True)
    assert result["failed"] is True, result
    assert result["msg"].startswith("VM vm1: QEMU failed to start: ") and \
        "unable to find CPU model 'Nehalem-v99'" in result["msg"], result["msg"]
    assert os.listdir(tmp_path / "images") == [], "the image created for the start is removed"
    paths = paths_of(tmp_path, "vm1")
    assert not os.path.exists(paths.pidfile) and not os.path.exists(paths.record)


def test_a_vm_that_0_3_runs_is_refused_then_taken_over_once_that_qemu_is_gone(tmp_path):
    """0.3 kept <run_dir>/vm1.qmp and <run_dir>/vm1.pid beside the record <state_dir>/vm1.json."""
    paths = paths_of(tmp_path, "vm1")
    legacy = paths.legacy
    os.makedirs(paths.state_dir)
    with open(legacy.record, "w", encoding="utf-8") as handle:
        json.dump({"owner": True, "machine": "pc-i440fx-10.0", "accel": "tcg"}, handle)
    # The helper's own monitor is <run_dir>/old/qmp; the one 0.3 would use is the second, at legacy.qmp.
    old = conftest.Qemu(paths.run_dir, "old", "-machine", "none", "-S", "-pidfile", legacy.pidfile,
                        "-chardev", f"socket,id=legacy,path={legacy.qmp},server=on,wait=off",
                        "-mon", "chardev=legacy,mode=control")
    try:
        refused = conftest.run_module("qemu_vm", tmp_path, name="vm1", host=host(tmp_path), spec=SPEC,
                                      state="stopped")
        assert refused["failed"] is True
        assert refused["msg"].startswith(f"VM vm1 runs under the file layout of livemig.qemu 0.3 ({legacy.qmp}): "
                                         "stop it with that version, or end its QEMU")
        facts = conftest.run_module("qemu_facts", tmp_path, probe=False, **host(tmp_path))
        vm1 = facts["ansible_facts"]["livemig_qemu"]["vms"]["vm1"]
        assert vm1["legacy_layout"] is True and vm1["running"] is True and vm1["status"] == "prelaunch", vm1
        assert vm1["owner"] is True and os.path.exists(legacy.record), "facts move nothing"
    finally:
        old.kill()
    started = conftest.run_module("qemu_vm", tmp_path, name="vm1", host=host(tmp_path), spec=SPEC)
    try:
        assert started["status"] == "running" and started["owner"] is True, started
        assert started["machine"] == "pc-i440fx-10.0", "the record of 0.3, pinned machine type and all"
        assert load_record(paths.record, "vm1").owner is True and not os.path.exists(legacy.record)
        assert started["sockets"]["qmp"] == paths.qmp
    finally:
        conftest.run_module("qemu_vm", tmp_path, name="vm1", host=host(tmp_path), state="absent")
