"""Bad requests get a clear error and change nothing on either host."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def running_vm(lab):
    name = lab.define_vm("badinput-vm", "idle")
    lab.start(name, "hv1", prefill=False)
    yield name
    lab.remove(name)


def refused(lab, running_vm, expected: str, **variables) -> None:
    before = lab.files(running_vm)
    result = lab.play("migrate", **{"livemig_vm": running_vm, "livemig_source": "hv1", "livemig_target": "hv2",
                                    **variables})
    assert result.failed, result.output
    assert expected in result.output, result.output
    assert result.changed == 0, result.output
    assert "Traceback" not in result.output
    assert lab.files(running_vm) == before, "a refused request must not touch either host"
    assert lab.qmp("hv1", running_vm, "query-status")["status"] == "running"
    if "already runs" not in expected:
        assert lab.pid("hv2", running_vm) is None


def test_unknown_vm(lab, running_vm):
    refused(lab, running_vm, "unknown VM (not a key of livemig_vms)", livemig_vm="no-such-vm")


def test_source_equals_target(lab, running_vm):
    refused(lab, running_vm, "source and target are the same host", livemig_target="hv1")


@pytest.mark.parametrize("bad_name", ["../etc", "a/b", "x..y"])
def test_unsafe_vm_name(lab, running_vm, bad_name):
    refused(lab, running_vm, "the VM name is invalid", livemig_vm=bad_name)


def test_unknown_target_host(lab, running_vm):
    refused(lab, running_vm, "both hosts must be in the inventory", livemig_target="hv9")


def test_memory_larger_than_target_has(lab, running_vm):
    lab.define_vm(running_vm, "idle", memory_mb=64 * 1024 * 1024)  # the inventory now asks for 64 TiB
    try:
        refused(lab, running_vm, "the VM needs 67108864 MiB of memory but hv2 has only")
    finally:
        lab.define_vm(running_vm, "idle")


def test_target_already_runs_the_vm(lab, running_vm):
    """A second copy of the VM runs on hv2 (started behind the playbooks' back): refuse, touch neither."""
    twin = lab.define_vm("badinput-twin", "idle")
    lab.start(twin, "hv1", prefill=False)
    try:
        started = lab.module("hv2", "qemu_vm", name=twin, spec=lab.vms[twin], claim=True, **lab.host_dirs("hv2"))
        assert started["rc"] == 0 and started["changed"], started
        refused(lab, twin, "the target already runs that VM (running)")
    finally:
        lab.remove(twin)


def test_start_refuses_a_vm_another_host_owns(lab, running_vm):
    before = lab.files(running_vm)
    result = lab.play("start", livemig_vm=running_vm, livemig_host="hv2")
    assert result.failed and f"{running_vm} belongs to or runs on hv1: migrate it instead" in result.output, result.output
    assert result.changed == 0 and lab.files(running_vm) == before and lab.pid("hv2", running_vm) is None


def test_qemu_vm_refuses_a_vm_this_host_does_not_own(lab, running_vm):
    before = lab.files(running_vm)
    result = lab.module("hv2", "qemu_vm", name=running_vm, spec=lab.vms[running_vm], **lab.host_dirs("hv2"))
    assert result["rc"] != 0 and "this host does not own the VM" in result["msg"], result
    assert lab.files(running_vm) == before and lab.pid("hv2", running_vm) is None


def test_qemu_vm_is_idempotent_on_the_owner(lab, running_vm):
    before = lab.files(running_vm)
    result = lab.module("hv1", "qemu_vm", name=running_vm, spec=lab.vms[running_vm], **lab.host_dirs("hv1"))
    assert result["rc"] == 0 and not result["changed"] and result["owner"] and result["status"] == "running", result
    assert lab.files(running_vm) == before


def test_check_mode_changes_nothing(lab, running_vm):
    before = lab.files(running_vm)
    result = lab.play("migrate", check=True, livemig_vm=running_vm, livemig_source="hv1", livemig_target="hv2")
    assert not result.failed, result.output
    assert "Check mode: would move" in result.output and "by live-mirror" in result.output
    assert "auto picks pre-copy" in result.output, "check mode prints the prediction"
    assert result.changed == 0, result.output
    assert lab.files(running_vm) == before
    assert lab.pid("hv2", running_vm) is None
    assert lab.qmp("hv1", running_vm, "query-status")["status"] == "running"


@pytest.mark.parametrize("variable,value,expected", [
    ("livemig_max_downtime_ms", -5, "livemig_max_downtime_ms must be a whole number from 1 to 2000000"),
    ("livemig_max_bandwidth", -1, "livemig_max_bandwidth must be a whole number from 0 to"),
    ("livemig_progress_interval", 0, "livemig_progress_interval must be a whole number from 1 to 3600"),
    ("livemig_stall_timeout", 0, "livemig_stall_timeout must be a whole number of at least 1"),
])
def test_a_number_out_of_range_is_refused_by_the_plan(lab, running_vm, variable, value, expected):
    refused(lab, running_vm, expected, **{variable: value})


@pytest.mark.parametrize("address,expected", [
    ("0.0.0.0", "the migration address of hv2 is 0.0.0.0, which listens on every interface"),
    ("198.51.100.77", "hv2 cannot listen on its migration address 198.51.100.77 (livemig_migration_address): "
                      "this host does not have that address (EADDRNOTAVAIL)"),
])
def test_a_migration_address_the_target_cannot_listen_on_is_refused(lab, running_vm, host_vars, address, expected):
    host_vars("hv2", livemig_migration_address=address)
    refused(lab, running_vm, expected)
