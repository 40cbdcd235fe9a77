"""qemu_migration_preflight, run as Ansible runs a module, on two "hosts" of this machine (their own run and image
directories, one shared directory): the source step on a real running VM, the target step finding the shared image
and listening, the measure step measuring the link through that listener; refusals and failures that give the lease
back and remove the marks; bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import conftest
import pytest
from test_migration import MB, boot_sector

from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths, token_path
from ansible_collections.livemig.qemu.plugins.module_utils._preflight import host_check_params
from ansible_collections.livemig.qemu.plugins.module_utils._state import process_alive

LOOPBACK = "127.0.0.1"
SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg",
        "disks": [{"name": "boot", "size_mb": 1, "format": "raw"},
                  {"name": "data", "size_mb": 8, "format": "qcow2", "shared": True}]}
LEASE = {"lock_id": "move-1", "operation": "migrate from hv1 to hv2", "holder": "alice@ctl", "ttl": 600,
         "hosts": ["hv1", "hv2"]}


@pytest.fixture
def hosts(tmp_path):
    """hv1 and hv2 as directories: each its own run and image directory, both the same shared directory; vm1's
    boot disk (the dirtying boot sector) on hv1, its shared data disk in the shared directory."""
    shared = tmp_path / "shared"
    found = {}
    for host in ("hv1", "hv2"):
        (tmp_path / host / "images").mkdir(parents=True)
        found[host] = {"run_dir": str(tmp_path / host / "run"), "image_dir": str(tmp_path / host / "images"),
                       "shared_dir": str(shared)}
    shared.mkdir()
    (tmp_path / "hv1" / "images" / "vm1-boot.raw").write_bytes(boot_sector(8 * MB).ljust(MB, b"\0"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(shared / "vm1-data.qcow2"), "8M"], check=True)
    return found


@pytest.fixture
def running(tmp_path, hosts):
    """vm1 runs on hv1."""
    started = conftest.run_module("qemu_vm", tmp_path, name="vm1", host=hosts["hv1"], spec=SPEC, claim=True)
    assert started["status"] == "running", started
    yield hosts
    held = lease_on(hosts["hv1"])  # a test's lease would refuse the removal
    removed = conftest.run_module("qemu_vm", tmp_path, name="vm1", host=hosts["hv1"], state="absent",
                                  lock_id=held["id"] if held else None)
    assert "failed" not in removed, removed


@pytest.fixture
def listeners():
    """Listener pids a test started: killed if a failing test left them running."""
    pids = []
    yield pids
    for pid in pids:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def preflight(tmp_path, host: dict, step: str, check_mode: bool = False, env: dict | None = None,
              spec: dict | None = None, **args) -> dict:
    return conftest.run_module("qemu_migration_preflight", tmp_path, check_mode=check_mode, env=env, name="vm1",
                               host=host, spec=spec or SPEC, step=step, **args)


def lease_on(host: dict) -> dict | None:
    path = VMPaths.on_host("vm1", host["run_dir"], host["image_dir"]).lock
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def marks(tmp_path) -> list[str]:
    return sorted(str(path.relative_to(tmp_path)) for path in tmp_path.glob("**/.*.livemig-token"))


def test_the_source_step_leases_gathers_facts_marks_and_checks_with_the_running_vms_machine(tmp_path, running):
    result = preflight(tmp_path, running["hv1"], "source", lease=LEASE)
    assert "failed" not in result and result["changed"] is False, result
    assert lease_on(running["hv1"])["id"] == "move-1" and result["lease"]["lock"]["id"] == "move-1"
    assert result["lease"]["broken"] is False and "ansible_facts" not in result
    vm = result["facts"]["vms"]["vm1"]
    assert vm["running"] is True and vm["accel"] == "tcg" and vm["machine"].startswith("pc-i440fx-"), vm
    assert result["facts"]["version"] and result["facts"]["machines"], "the probe QEMU was asked"
    check = result["host_check"]
    assert check["runs_here"] is True and check["problems"] == [] and sorted(check["volumes"]) == ["boot", "data"]
    assert check["volumes"]["boot"]["allocated"] > 0
    assert set(result["storage"]) == {"token", "disks"} and result["storage"]["disks"]["data"]["virtual_size"] == 8 * MB
    assert marks(tmp_path) == ["hv1/images/.vm1-boot.raw.livemig-token", "shared/.vm1-data.qcow2.livemig-token"]


def test_the_host_check_gets_the_running_vms_accelerator_and_machine_unless_given():
    running = {"accel": "tcg", "machine": "pc-i440fx-10.0"}
    assert host_check_params(None, running) == {"accel": "tcg", "machine": "pc-i440fx-10.0", "address": None,
                                                "tls_dir": None}
    given = {"accel": "kvm", "machine": "pc-q35-7.2", "address": "198.18.0.1", "tls_dir": "/etc/livemig/tls"}
    assert host_check_params(given, running) == given
    target = host_check_params({"address": "198.18.0.2"}, None)
    assert target == {"accel": None, "machine": None, "address": "198.18.0.2", "tls_dir": None}


def test_the_target_finds_the_shared_image_and_listens_and_the_measure_step_measures_through_it(tmp_path, running,
                                                                                                listeners):
    source = preflight(tmp_path, running["hv1"], "source", lease=LEASE)
    assert "failed" not in source, source
    target = preflight(tmp_path, running["hv2"], "target", lease={**LEASE, "holding": "hv1"},
                       token=source["storage"]["token"], check_kvm=False,
                       check={"accel": "tcg", "machine": source["facts"]["vms"]["vm1"]["machine"],
                              "address": LOOPBACK},
                       link_listener={"address": LOOPBACK, "timeout": 20})
    assert "failed" not in target and target["changed"] is False, target
    listener = target["link_listener"]
    listeners.append(listener["pid"])
    assert lease_on(running["hv2"])["id"] == "move-1"
    assert {name: disk["same_file"] for name, disk in target["storage"]["disks"].items()} == \
        {"boot": False, "data": True}
    assert target["host_check"]["address"]["bindable"] is True and target["host_check"]["runs_here"] is False
    assert "vm1" not in target["facts"]["vms"]
    assert listener["port"] > 0 and len(listener["token"]) == 64 and process_alive(listener["pid"]), listener

    measured = preflight(tmp_path, running["hv1"], "measure",
                         measure={"disks": ["boot"], "peer_address": LOOPBACK, "peer_port": listener["port"],
                                  "token": listener["token"], "link_seconds": 0.3, "dirty_rate_seconds": 0.3})
    assert "failed" not in measured and measured["changed"] is False, measured
    found = measured["measurements"]
    assert found["link_rate"] > 0 and found["link_error"] is None and found["ram_bytes"] == 32 * MB, found
    assert measured["status"] == "running" and measured["msg"].startswith("VM vm1: dirties ")
    assert marks(tmp_path) == [], "the measure step removes the marks"
    assert "lease" not in measured and lease_on(running["hv1"])["id"] == "move-1", "the run gives its lease back"


def test_a_listener_that_cannot_start_fails_nothing(tmp_path, hosts):
    target = preflight(tmp_path, hosts["hv2"], "target", lease=LEASE, token="0" * 32, check_kvm=False,
                       link_listener={"address": "0.0.0.0"})
    assert "failed" not in target, target
    assert list(target["link_listener"]) == ["error"] and "every address" in target["link_listener"]["error"]


def test_another_lease_is_refused_with_its_holders_words_and_kept(tmp_path, hosts):
    assert "failed" not in preflight(tmp_path, hosts["hv1"], "source", lease=LEASE)
    second = preflight(tmp_path, hosts["hv1"], "source",
                       lease={**LEASE, "lock_id": "move-2", "holder": "bob@ctl2"})
    assert second["failed"] is True and second["failed_step"] == "lease", second
    assert second["msg"].startswith("taking the lease: VM vm1 is locked on this host by migrate from hv1 to hv2 "
                                    "move-1 of alice@ctl, since "), second["msg"]
    assert "livemig_break_lock=move-1" in second["msg"] and second["lock"]["id"] == "move-1"
    assert lease_on(hosts["hv1"])["id"] == "move-1", "a refused call leaves the holder's lease alone"
    broken = preflight(tmp_path, hosts["hv1"], "source",
                       lease={**LEASE, "lock_id": "move-2", "break_lock_id": "move-1"})
    assert "failed" not in broken and broken["lease"]["broken"] is True, broken
    assert lease_on(hosts["hv1"])["id"] == "move-2"


FAKE_IP = "#!/bin/sh\necho 'ip: this is no JSON'\n"


def test_a_failing_host_check_gives_the_lease_back_and_removes_the_marks(tmp_path, hosts):
    """An `ip` whose output is no JSON (an iproute2 without -j) fails the host check of a VM with a NIC."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ip").write_text(FAKE_IP, encoding="ascii")
    (fake / "ip").chmod(0o755)
    spec = {**SPEC, "nics": [{"name": "lan", "bridge": "br-livemig-none"}]}
    failed = preflight(tmp_path, hosts["hv1"], "source", lease=LEASE, spec=spec,
                       env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert failed["failed"] is True and failed["failed_step"] == "host_check", failed
    assert failed["msg"].startswith("checking the host: ip link show br-livemig-none gave output that is not JSON")
    assert lease_on(hosts["hv1"]) is None and marks(tmp_path) == []


def test_a_marking_that_fails_half_way_removes_the_marks_it_wrote(tmp_path, hosts):
    """The shared image's token path is taken by a directory: the boot disk's mark is written, the data disk's
    cannot be, nor removed; the boot disk's mark is removed again, and the message says what was left."""
    blocker = token_path(os.path.join(hosts["hv1"]["shared_dir"], "vm1-data.qcow2"))
    os.mkdir(blocker)
    failed = preflight(tmp_path, hosts["hv1"], "source", lease=LEASE)
    assert failed["failed"] is True and failed["failed_step"] == "storage", failed
    assert failed["msg"].startswith("marking the storage: cannot write the token file next to disk data: ")
    assert f"; removing the marks failed too: cannot remove the token file {blocker}: " in failed["msg"]
    assert not os.path.exists(token_path(os.path.join(hosts["hv1"]["image_dir"], "vm1-boot.raw")))
    assert lease_on(hosts["hv1"]) is None


def test_check_mode_takes_no_lease_but_marks_and_the_measure_step_removes_them(tmp_path, hosts):
    source = preflight(tmp_path, hosts["hv1"], "source", check_mode=True, lease=LEASE)
    assert "failed" not in source and source["changed"] is False, source
    assert lease_on(hosts["hv1"]) is None and source["lease"]["lock"] is None
    assert len(marks(tmp_path)) == 2, "the marks are written in check mode too"
    target = preflight(tmp_path, hosts["hv2"], "target", check_mode=True, lease=LEASE, check_kvm=False,
                       token=source["storage"]["token"])
    assert target["storage"]["disks"]["data"]["same_file"] is True, target
    assert "failed" not in preflight(tmp_path, hosts["hv1"], "measure", check_mode=True)
    assert marks(tmp_path) == []


def test_without_a_lease_option_the_steps_take_no_lease(tmp_path, hosts):
    """The preflight playbook plans without changing anything: no lease, the marks written and removed again."""
    source = preflight(tmp_path, hosts["hv1"], "source")
    assert "failed" not in source and source["lease"] is None, source
    assert lease_on(hosts["hv1"]) is None and marks(tmp_path) != []
    preflight(tmp_path, hosts["hv1"], "measure")
    assert marks(tmp_path) == []


@pytest.mark.parametrize(("args", "words"), [
    ({"step": "source-and-target", "lease": LEASE}, "value of step must be one of: source, target, measure"),
    ({"step": "target", "lease": LEASE}, "step is target but all of the following are missing: token"),
    ({"step": "source", "lease": {"holder": "alice"}}, "missing required arguments: lock_id found in lease"),
])
def test_bad_input_says_what_to_fix(tmp_path, hosts, args, words):
    failed = conftest.run_module("qemu_migration_preflight", tmp_path, name="vm1", host=hosts["hv1"], spec=SPEC,
                                 **args)
    assert failed["failed"] is True and words in failed["msg"], failed
    assert lease_on(hosts["hv1"]) is None and marks(tmp_path) == []
