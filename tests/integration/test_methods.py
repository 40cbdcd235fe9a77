"""Every migration method through the documented playbooks, and the plan that picks it."""
from __future__ import annotations

import os
import time

from conftest import LAB_DIR, finish_and_check_disk, last_ring, migrate_and_check, move_and_verify, watched

STATE_FILES = ("/state", "/state.partial")  # a VM's state file in <state_dir>/<vm>/, and one half written


def test_preflight_prints_the_plan_and_changes_nothing(lab, vm):
    name = vm("idle")
    lab.start(name, "hv1", prefill=False)
    before = lab.files(name)
    result = lab.play("preflight", livemig_vm=name, livemig_source="hv1", livemig_target="hv2")
    assert not result.failed, result.output
    assert f"{name}: hv1 (10.0" in result.output and "-> hv2 (10.0" in result.output
    assert "live-mirror" in result.output and "disk root: mirror (disk root is local to the source)" in result.output
    assert "cold: possible, not tried: a cold move (guest restarted) needs livemig_allow_cold=true" in result.output
    assert result.changed == 0
    assert lab.files(name) == before, "preflight must leave both hosts as they were (token files removed)"
    assert lab.pid("hv2", name) is None

    check = lab.play("migrate", check=True, livemig_vm=name, livemig_source="hv1", livemig_target="hv2",
                     livemig_method="stateful")
    assert not check.failed, check.output
    assert "would move" in check.output and "by stateful" in check.output
    assert lab.files(name) == before and lab.pid("hv2", name) is None


def test_stateful_move_continues_the_guest(lab, vm):
    name = vm("light")
    digest = lab.start(name, "hv1")
    with watched(lab, name, "hv1") as tap:
        report = migrate_and_check(lab, tap, name, "hv1", "hv2", method="stateful", livemig_method="stateful")
        assert report["frozen_ms"] > 0 and report["state_bytes"] > 0
        # Only allocated data crossed: the prefilled 8 MiB and the ring, not the empty 1 GiB.
        assert 8 << 20 <= report["disk_bytes"] < 64 << 20, report
        leftovers = [path for path in lab.files(name) if path.endswith(STATE_FILES)]
        assert leftovers == [], "the state files must be gone on both hosts"
        # Back to hv1, which kept its now stale copy of the disk (livemig_keep_source_disks): it is replaced.
        migrate_and_check(lab, tap, name, "hv2", "hv1", method="stateful", livemig_method="stateful")
        ring = last_ring(tap)
    finish_and_check_disk(lab, name, "hv1", digest, ring)


def test_host_policy_makes_auto_fall_back_to_stateful(lab, vm, host_vars):
    name = vm("idle")
    lab.start(name, "hv1", prefill=False)
    host_vars("hv2", livemig_host_policy={"methods": ["stateful", "cold"]})
    with watched(lab, name, "hv1") as tap:
        migrate_and_check(lab, tap, name, "hv1", "hv2", method="stateful")
    assert "live-mirror: rejected: live migration disabled by host policy on hv2" in "\n".join(lab.report(name)["plan"])


def test_cold_move_restarts_the_guest_with_its_disk(lab, vm):
    name = vm("light")
    digest = lab.start(name, "hv1")
    with watched(lab, name, "hv1") as tap:
        ring = last_ring(tap)
        after = time.monotonic()
        result = lab.migrate(name, "hv1", "hv2", livemig_method="cold", livemig_powerdown_timeout=0)
        assert not result.failed, result.output
        tap.wait_for(r"^LMREADY", label="hv2", timeout=60, since=after)
    report = lab.report(name)
    assert report["method"] == "cold" and report["frozen_ms"] > 0
    assert lab.pid("hv1", name) is None and lab.record("hv1", name) is None
    assert lab.record("hv2", name)["owner"] is True
    finish_and_check_disk(lab, name, "hv2", digest, ring)


def test_shared_storage_moves_live_without_copying(lab, vm):
    name = vm("light", shared=True)
    report = move_and_verify(lab, name, lab.start(name, "hv1"), "hv1", "hv2", method="live-shared")
    assert "  disk root: shared (disk root is shared, no copy needed)" in report["plan"]
    assert report["mirrors"] == [] and not report["statistics"].get("mirror_processed_bytes"), "nothing is mirrored"
    assert os.path.exists(lab.disk_path(name, "hv2")), "the shared image stays"


def test_disk_declared_shared_but_not_shared_is_refused(lab, vm, host_vars):
    name = vm("idle", shared=True)
    lab.start(name, "hv1")
    elsewhere = os.path.join(LAB_DIR, "hv2", "not-shared")
    os.makedirs(elsewhere, exist_ok=True)
    host_vars("hv2", livemig_shared_dir=elsewhere)
    before = lab.files(name)
    result = lab.play("preflight", livemig_vm=name, livemig_source="hv1", livemig_target="hv2",
                      livemig_allow_cold=True)
    assert result.failed, result.output
    for method in ("live-shared", "live-mirror", "stateful", "cold"):
        assert f"{method}: disk root is declared shared but is not the same file on both hosts" in result.output
    assert "Traceback" not in result.output and result.changed == 0
    assert lab.files(name) == before and os.listdir(elsewhere) == []
    assert lab.qmp("hv1", name, "query-status")["status"] == "running"
