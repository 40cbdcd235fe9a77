"""Post-copy on QEMU 10.0 under TCG: started by the convergence policy, with and without disk mirrors, and failing."""
from __future__ import annotations

import json
import subprocess
import threading
import time
from types import SimpleNamespace

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._migration import (
    MigrationFailed, MigrationSettings, SourceMigration)
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import cancel as cancel_migration
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import resume_if_paused
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession
from tcp_link import Link
from test_migration import (  # pylint: disable=unused-import  # `pair` is a fixture
    AFTER_READY, CAP, DIRTY_START, FAST_POLICY, MB, NODE, free_port, pair, query_status, quit_qemu,
    random_area_arrived, wait_status)


# -- helpers ---------------------------------------------------------------------------------

def migrate(vms, settings):
    """Run one migration; (its statistics or its failure, the source's MIGRATION statuses in order)."""
    with vms.src.subscribe(["MIGRATION"]) as events:
        try:
            result = SourceMigration(vms.src, settings).run()
        except MigrationFailed as exc:
            result = exc
        statuses = []
        while (event := events.get(0.05)) is not None:
            statuses.append(event["data"]["status"])
    return result, statuses


def policy_steps(actions):
    """What the policy did, without the bandwidth share's max-bandwidth changes."""
    return [action["parameters"] if action["action"] == "set-parameters" else action["action"]
            for action in actions if "max-bandwidth" not in action.get("parameters", {})]


def runs_on_target(vms):
    return conftest.guest_keeps_changing(vms.tgt, DIRTY_START, timeout=5)


def when_status(monitor, wanted, action):
    """A thread that waits on a second source monitor for the migration status `wanted`, then runs action()."""
    done = SimpleNamespace(problems=[], seen=False)

    def watch():
        try:
            with QMPSession(monitor, connect_timeout=5) as watcher:
                deadline = time.monotonic() + 20
                while watcher.execute("query-migrate").get("status") != wanted:
                    assert time.monotonic() < deadline, f"the migration never became {wanted}"
                    time.sleep(0.005)
                done.seen = True
                action()
        except Exception as exc:  # pylint: disable=broad-except
            done.problems.append(exc)

    done.thread = threading.Thread(target=watch)
    done.thread.start()
    return done


def run_module(tmp_path, module, **args):
    return conftest.run_module(module, tmp_path, **{"run_dir": str(tmp_path), **args})


# -- post-copy -------------------------------------------------------------------------------

def test_postcopy_finishes_what_pre_copy_cannot_with_a_disk_mirror(pair):
    """The auto policy switches to post-copy as soon as a pass after the bulk shows pre-copy cannot converge (the
    8 MiB the guest dirties take 0.5 s at the 16 MiB/s cap, more than the 200 ms target: no downtime step first).
    With pause-before-switchover QEMU stops at pre-switchover before post-copy too: the mirror is finished there,
    then post-copy runs."""
    vms = pair(guest=8, target_capabilities=["postcopy-ram"])
    pattern, offset, length = AFTER_READY
    vms.src.execute("human-monitor-command", {
        "command-line": f'qemu-io -d /machine/peripheral/vd-root/virtio-backend "write -P {pattern} {offset} {length}"'})
    stats, statuses = migrate(vms, MigrationSettings(
        uri=vms.uri, mirrored_nodes=[NODE], max_bandwidth=CAP, downtime_limit_ms=200, capabilities=["postcopy-ram"],
        sample_interval=0.2, policy_overrides=FAST_POLICY))

    assert not isinstance(stats, MigrationFailed), str(stats)
    assert stats["status"] == "completed" and stats["postcopy_started"] is True
    assert statuses[-5:] == ["active", "pre-switchover", "device", "postcopy-active", "completed"]
    assert policy_steps(stats["policy_actions"]) == ["start-postcopy"]
    assert stats["postcopy_time_ms"] > 0 and stats["ram_postcopy_bytes"] > 0
    assert stats["mirror_processed_bytes"] > 0
    assert stats["source_stop_time"] <= stats["pre_switchover_time"] <= stats["mirrors_done_time"]
    assert {point["phase"] for point in stats["history"]} <= {"pre-copy", "switchover", "post-copy"}
    assert query_status(vms.src) == "postmigrate"
    assert wait_status(vms.tgt, "running") == "running" and runs_on_target(vms)
    assert random_area_arrived(vms)

    quit_qemu(vms.src, vms.source)
    quit_qemu(vms.tgt, vms.target)
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", vms.images.source,
                              vms.images.target], capture_output=True, text=True, check=False)
    assert compare.returncode == 0 and "identical" in compare.stdout, compare.stdout + compare.stderr


def test_postcopy_early_starts_after_the_first_pass(pair):
    vms = pair(disk=False, guest=8, target_capabilities=["postcopy-ram"])
    stats, statuses = migrate(vms, MigrationSettings(uri=vms.uri, max_bandwidth=CAP, convergence="postcopy-early",
                                                     capabilities=["postcopy-ram"], sample_interval=0.2))
    assert not isinstance(stats, MigrationFailed), str(stats)
    assert stats["postcopy_started"] is True and stats["policy"] == "postcopy-early"
    assert [action["action"] for action in stats["policy_actions"]] == ["start-postcopy"]
    first_pass_done = next(point["t"] for point in stats["history"] if (point["passes"] or 0) >= 2)
    assert stats["policy_actions"][0]["t"] == first_pass_done
    # The source waits before the post-copy too (the point of no return is marked there), then goes on.
    assert statuses[-4:] == ["pre-switchover", "device", "postcopy-active", "completed"]
    assert wait_status(vms.tgt, "running") == "running" and runs_on_target(vms)
    assert random_area_arrived(vms)


def test_a_failure_during_postcopy_never_resumes_the_source(pair, tmp_path):
    """The target dies while it pulls pages: QEMU pauses the post-copy and the source stays stopped."""
    vms = pair(disk=False, guest=8, target_capabilities=["postcopy-ram"], source_monitor=True)
    progress = str(tmp_path / "vm.progress.json")
    watcher = when_status(vms.monitor, "postcopy-active", vms.target.kill)
    try:
        failure, unused_statuses = migrate(vms, MigrationSettings(
            uri=vms.uri, max_bandwidth=CAP, convergence="postcopy-early", capabilities=["postcopy-ram"],
            parameters={"max-postcopy-bandwidth": 256 * 1024}, sample_interval=0.2, progress_path=progress))
    finally:
        watcher.thread.join(30)
    assert not watcher.problems and watcher.seen
    assert isinstance(failure, MigrationFailed)
    assert failure.phase == "post-copy" and failure.source_running is False
    assert "postcopy-paused" in failure.cause and "never resume the source" in failure.cause
    assert failure.stats["postcopy_started"] is True
    assert vms.src.execute("query-migrate")["status"] == "postcopy-paused"
    assert query_status(vms.src) != "running"
    with pytest.raises(QMPError, match="postcopy-paused: cancelling it would lose the guest"):
        cancel_migration(vms.src)
    with pytest.raises(QMPError, match="the target runs the guest"):
        resume_if_paused(vms.src)
    assert query_status(vms.src) != "running"
    with open(progress, encoding="utf-8") as handle:
        final = json.load(handle)
    assert final["outcome"] == "failed" and "postcopy-paused" in final["message"]


def test_a_paused_postcopy_is_recovered_by_resuming_it(pair):
    """The recovery the failure message names: migrate-recover on the target, migrate resume=true on the source."""
    vms = pair(disk=False, guest=8, target_capabilities=["postcopy-ram"], source_monitor=True)
    problems = []

    def pause_once_the_target_runs():
        try:
            with QMPSession(vms.monitor, connect_timeout=5) as source_monitor:
                assert wait_status(vms.tgt, "running", 20) == "running"
                source_monitor.execute("migrate-pause")  # what a cut link does, without waiting for TCP
        except Exception as exc:  # pylint: disable=broad-except
            problems.append(exc)

    pauser = threading.Thread(target=pause_once_the_target_runs)
    pauser.start()
    try:
        failure, unused_statuses = migrate(vms, MigrationSettings(
            uri=vms.uri, max_bandwidth=CAP, convergence="postcopy-early", capabilities=["postcopy-ram"],
            parameters={"max-postcopy-bandwidth": 256 * 1024}, sample_interval=0.2))
    finally:
        pauser.join(30)
    assert not problems, problems
    assert isinstance(failure, MigrationFailed) and failure.phase == "post-copy"
    assert "postcopy-paused: Postcopy migration is paused by the user" in failure.cause
    assert vms.tgt.execute("query-migrate")["status"] == "postcopy-paused"

    vms.tgt.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
    port = vms.tgt.execute("query-migrate")["socket-address"][0]["port"]
    vms.src.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 0})
    vms.src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}", "resume": True})
    deadline = time.monotonic() + 10
    while vms.src.execute("query-migrate")["status"] != "completed":
        assert time.monotonic() < deadline, vms.src.execute("query-migrate")
        time.sleep(0.02)
    assert query_status(vms.src) == "postmigrate" and runs_on_target(vms)
    assert random_area_arrived(vms)


def recover_on_target(vms, recovery_port, stop):
    """What the target's watcher does: migrate-recover on the recovery port whenever the post-copy pauses there."""
    problems = []

    def watch():
        try:
            while not stop.is_set():
                if vms.tgt.execute("query-migrate").get("status") == "postcopy-paused":
                    try:
                        vms.tgt.execute("migrate-recover", {"uri": f"tcp:127.0.0.1:{recovery_port}"})
                    except QMPError:
                        pass  # the broken stream is not torn down yet: again in a moment, as the watcher does
                time.sleep(0.2)
        except Exception as exc:  # pylint: disable=broad-except
            problems.append(exc)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread, problems


def test_a_postcopy_survives_its_link_cut_for_5s(pair):
    """The link goes silent for 5 s in post-copy: no byte moves, the source pauses the post-copy on purpose, tries to
    resume it once a second until the link is back and the target listens again, and the move completes.

    Without postcopy-preempt: with it, this test's user-space link sometimes never delivers the broken main stream
    to the target (about one run in seven; a real link always delivers it). The lab's test cuts a real link with
    preempt on (tests/integration/test_convergence.py)."""
    capabilities = ["postcopy-ram"]
    vms = pair(disk=False, guest=20, target_capabilities=capabilities, source_monitor=True)
    recovery_port = free_port()
    main, recovery = Link(int(vms.uri.rsplit(":", 1)[1])), Link(recovery_port)

    def cut_for_5s():
        time.sleep(0.5)
        main.cut()
        recovery.cut()
        time.sleep(5.0)
        main.mend()
        recovery.mend()

    cutter = when_status(vms.monitor, "postcopy-active", cut_for_5s)
    stop = threading.Event()
    watcher, problems = recover_on_target(vms, recovery_port, stop)
    try:
        stats, unused_statuses = migrate(vms, MigrationSettings(
            uri=main.uri, max_bandwidth=CAP, convergence="postcopy-early", capabilities=capabilities,
            parameters={"max-postcopy-bandwidth": 4 * MB}, sample_interval=0.1, recovery_uri=recovery.uri,
            recovery_timeout=30, postcopy_stall_seconds=1.0))
    finally:
        cutter.thread.join(30)
        stop.set()
        watcher.join(10)
        main.close()
        recovery.close()
    assert not cutter.problems and cutter.seen and not problems, (cutter.problems, problems)
    assert not isinstance(stats, MigrationFailed), str(stats)
    assert stats["status"] == "completed" and stats["postcopy_started"] is True
    assert len(stats["recoveries"]) >= 1 and recovery.connections >= 1, stats["recoveries"]
    first = stats["recoveries"][0]
    assert first["attempts"] >= 1 and first["resumed_at"] - first["paused_at"] > 1.0, first
    assert [action["action"] for action in stats["policy_actions"]].count("migrate-pause") >= 1
    assert query_status(vms.src) == "postmigrate" and runs_on_target(vms) and random_area_arrived(vms)


def test_a_target_that_dies_as_the_postcopy_starts_leaves_the_source_paused(pair):
    """The target dies at migrate-continue of a post-copy: QEMU 10.0 then stays in its device state with no byte
    moving; the stall ends the migration, and the source, which the target could have run, stays paused."""
    vms = pair(disk=False, guest=8, target_capabilities=["postcopy-ram"])
    points_of_no_return = []

    def kill_the_target_at_the_switchover():
        points_of_no_return.append(time.monotonic())
        if len(points_of_no_return) == 2:  # migrate-start-postcopy, then migrate-continue at pre-switchover
            vms.target.kill()

    failure, unused_statuses = migrate(vms, MigrationSettings(
        uri=vms.uri, max_bandwidth=CAP, convergence="postcopy-early", capabilities=["postcopy-ram"],
        sample_interval=0.1, stall_timeout=3, before_point_of_no_return=kill_the_target_at_the_switchover))
    assert len(points_of_no_return) == 2
    assert isinstance(failure, MigrationFailed) and failure.phase == "post-copy", failure
    assert failure.source_running is False and failure.target_may_have_run is True
    assert "no data moved for 3s" in failure.cause and "the post-copy cannot be resumed" in failure.cause
    time.sleep(0.5)
    assert query_status(vms.src) != "running"


# -- the modules -----------------------------------------------------------------------------

def test_incoming_capabilities_and_parameters_are_checked_then_set(qemu, tmp_path):
    qemu("vm1", "-machine", "pc", "-m", "32", "-incoming", "defer")
    refused = run_module(tmp_path, "qemu_migrate_incoming", name="vm1", address="127.0.0.1",
                         capabilities=["postcopy-ram", "bogus"], parameters={"multifd-chanels": 4})
    assert refused["failed"] is True
    assert "unknown migration capabilities bogus" in refused["msg"]
    assert "unknown migration parameters multifd-chanels" in refused["msg"]
    listening = run_module(tmp_path, "qemu_migrate_incoming", name="vm1", address="127.0.0.1",
                           capabilities=["postcopy-ram"], parameters={"multifd-channels": "4"})
    assert listening.get("failed") is not True, listening
    assert listening["changed"] is True and listening["uri"].startswith("tcp:127.0.0.1:")
    with QMPSession(str(tmp_path / "vm1" / "qmp"), connect_timeout=5) as session:
        capabilities = {c["capability"]: c["state"] for c in session.execute("query-migrate-capabilities")}
        assert capabilities["postcopy-ram"] is True and capabilities["events"] is True
        assert session.execute("query-migrate-parameters")["multifd-channels"] == 4


def test_qemu_migrate_refuses_postcopy_early_without_postcopy_ram(qemu, tmp_path):
    qemu("vm1", "-machine", "pc", "-m", "32", "-qmp", f"unix:{tmp_path / 'vm1' / 'job.qmp'},server=on,wait=off")
    result = run_module(tmp_path, "qemu_migrate", name="vm1", uri="tcp:127.0.0.1:9", convergence="postcopy-early")
    assert result["failed"] is True and "postcopy-early needs postcopy-ram in capabilities" in result["msg"]
    result = run_module(tmp_path, "qemu_migrate", name="vm1", uri="tcp:127.0.0.1:9", capabilities=["postcopy-rma"])
    assert result["failed"] is True and "unknown migration capabilities postcopy-rma" in result["msg"]
