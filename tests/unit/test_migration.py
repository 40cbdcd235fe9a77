from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils import _mirror
from ansible_collections.livemig.qemu.plugins.module_utils._migration import (
    ACTIVE, UNLIMITED_BANDWIDTH, MigrationFailed, MigrationSettings, SourceMigration, sample)
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession

MB = 1 << 20
RAM_MB = 32
NODE = "disk-root"
# Written into the source image before the mirror starts, and through the running source after it is READY.
BEFORE_MIRROR = ("0x5a", 1 * MB, 4 * MB)
AFTER_READY = ("0x33", 8 * MB, 1 * MB)


# -- helpers ---------------------------------------------------------------------------------

def make_image(path, *writes):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"], check=True)
    for pattern, offset, length in writes:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", path],
                       check=True, capture_output=True)


def disk_args(path):
    return ["-blockdev", f'{{"driver":"file","filename":"{path}","node-name":"file-root"}}',
            "-blockdev", f'{{"driver":"qcow2","file":"file-root","node-name":"{NODE}"}}',
            "-device", f"virtio-blk-pci,drive={NODE},id=vd-root"]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def query_status(session):
    return session.execute("query-status")["status"]


def wait_status(session, wanted, timeout=10.0):
    deadline = time.monotonic() + timeout
    while (status := query_status(session)) != wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    return status


def wait_migration(session, timeout=10.0):
    """The migration status once QEMU has finished cancelling."""
    deadline = time.monotonic() + timeout
    while (status := session.execute("query-migrate").get("status")) == "cancelling" \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    return status


def leftovers(session):
    """Block jobs and livemig NBD nodes still present on the source."""
    jobs = [job["device"] for job in session.execute("query-block-jobs")]
    nodes = [node["node-name"] for node in session.execute("query-named-block-nodes", {"flat": True})
             if node.get("node-name", "").startswith("livemig-nbd-")]
    return jobs + nodes


def when_active(monitor, action):
    """A thread that waits on a second source monitor until the migration is active, then runs action()."""
    done = threading.Event()
    problems = []

    def watch():
        try:
            with QMPSession(monitor, connect_timeout=5) as watcher:
                deadline = time.monotonic() + 20
                while watcher.execute("query-migrate").get("status") != "active":
                    assert time.monotonic() < deadline, "the migration never became active"
                    time.sleep(0.01)
                action(watcher)
                done.set()
        except Exception as exc:  # pylint: disable=broad-except
            problems.append(exc)

    thread = threading.Thread(target=watch)
    thread.start()
    return SimpleNamespace(thread=thread, done=done, problems=problems)


def quit_qemu(session, vm):
    with contextlib.suppress(QMPError):
        session.execute("quit", timeout=5)
    vm.process.wait(10)


@pytest.fixture
def pair(qemu, tmp_path):
    """Start a source (running) and an incoming target; optionally mirror the source disk to the target."""
    sessions = contextlib.ExitStack()

    def start(disk=True, mirror=True, ram_pattern="random", source_monitor=False, target_monitor=False):
        ram_file = str(tmp_path / "ram")
        with open(ram_file, "wb") as handle:
            handle.write(os.urandom(RAM_MB * MB) if ram_pattern == "random" else bytes(RAM_MB * MB))
        ram = ["-machine", "pc,memory-backend=ram", "-m", str(RAM_MB)]
        source_args = [*ram, "-object", f"memory-backend-file,id=ram,size={RAM_MB}M,mem-path={ram_file},share=off"]
        target_args = [*ram, "-object", f"memory-backend-ram,id=ram,size={RAM_MB}M", "-incoming", "defer"]
        images = SimpleNamespace(source=str(tmp_path / "source.qcow2"), target=str(tmp_path / "target.qcow2"))
        if disk:
            make_image(images.source, BEFORE_MIRROR)
            make_image(images.target)
            source_args += disk_args(images.source)
            target_args += disk_args(images.target)
        monitor = str(tmp_path / "source-2.qmp")
        if source_monitor:
            source_args += ["-chardev", f"socket,id=mon2,path={monitor},server=on,wait=off",
                            "-mon", "chardev=mon2,mode=control"]
        target_monitor_path = str(tmp_path / "target-2.qmp")
        if target_monitor:
            target_args += ["-chardev", f"socket,id=mon2,path={target_monitor_path},server=on,wait=off",
                            "-mon", "chardev=mon2,mode=control"]
        source = qemu("source", *source_args)
        target = qemu("target", *target_args)
        src = sessions.enter_context(QMPSession(source.qmp, connect_timeout=5))
        tgt = sessions.enter_context(QMPSession(target.qmp, connect_timeout=5))
        tgt.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = tgt.execute("query-migrate")["socket-address"][0]["port"]
        if disk and mirror:
            nbd_port = free_port()
            address = {"type": "inet", "data": {"host": "127.0.0.1", "port": str(nbd_port)}}
            tgt.execute("nbd-server-start", {"addr": address})
            tgt.execute("block-export-add", {"type": "nbd", "id": "export-root", "node-name": NODE,
                                             "name": "root", "writable": True})
            _mirror.start_mirror(src, NODE, "127.0.0.1", nbd_port, "root")
            assert _mirror.wait_ready(src, NODE, time.monotonic() + 30)["ready"]
        return SimpleNamespace(source=source, target=target, src=src, tgt=tgt, uri=f"tcp:127.0.0.1:{port}",
                               images=images, ram_file=ram_file, monitor=monitor,
                               target_monitor=target_monitor_path)

    with sessions:
        yield start


# -- sample() --------------------------------------------------------------------------------

# query-migrate answers of QEMU 10.0 during one pre-copy migration with a pause before switchover.
RECORDED = [
    (0.003, {"status": "setup", "expected-downtime": 300, "setup-time": 0, "total-time": 0}),
    (1.004, {"status": "active", "expected-downtime": 300, "setup-time": 2, "total-time": 1003,
             "ram": {"total": 1074069504, "transferred": 132915642, "remaining": 905121792, "duplicate": 4210,
                     "normal": 32277, "normal-bytes": 132206592, "dirty-sync-count": 1, "page-size": 4096,
                     "mbps": 1063.3, "dirty-pages-rate": 0, "pages-per-second": 32450, "precopy-bytes": 132915642,
                     "downtime-bytes": 0, "postcopy-bytes": 0, "multifd-bytes": 0, "postcopy-requests": 0,
                     "dirty-sync-missed-zero-copy": 0}}),
    (2.005, {"status": "active", "expected-downtime": 412, "setup-time": 2, "total-time": 2004,
             "cpu-throttle-percentage": 20,
             "ram": {"total": 1074069504, "transferred": 268435456, "remaining": 20971520, "duplicate": 180000,
                     "normal": 65402, "normal-bytes": 267886592, "dirty-sync-count": 3, "page-size": 4096,
                     "mbps": 1073.7, "dirty-pages-rate": 2560, "pages-per-second": 32768,
                     "precopy-bytes": 268435456, "downtime-bytes": 0, "postcopy-bytes": 0, "multifd-bytes": 0,
                     "postcopy-requests": 0, "dirty-sync-missed-zero-copy": 0}}),
    (2.101, {"status": "pre-switchover", "expected-downtime": 300, "setup-time": 2, "total-time": 2100,
             "ram": {"total": 1074069504, "transferred": 289406976, "remaining": 0, "duplicate": 180100,
                     "normal": 70520, "dirty-sync-count": 4, "page-size": 4096, "mbps": 1073.7,
                     "dirty-pages-rate": 0}}),
]


def test_sample_of_a_recorded_history():
    history = [sample(info, elapsed) for elapsed, info in RECORDED]
    assert history[0] == {"t": 0.003, "status": "setup", "remaining": None, "transferred": None, "mbps": None,
                          "dirty_rate": 0, "passes": None, "throttle": 0}
    assert history[1] == {"t": 1.004, "status": "active", "remaining": 905121792, "transferred": 132915642,
                          "mbps": 1063.3, "dirty_rate": 0, "passes": 1, "throttle": 0}
    assert history[2] == {"t": 2.005, "status": "active", "remaining": 20971520, "transferred": 268435456,
                          "mbps": 1073.7, "dirty_rate": 2560 * 4096, "passes": 3, "throttle": 20}
    assert history[3]["status"] == "pre-switchover" and history[3]["remaining"] == 0
    assert [point["t"] for point in history] == sorted(point["t"] for point in history)
    moved = [point["transferred"] for point in history if point["transferred"] is not None]
    assert moved == sorted(moved)


def test_sample_rounds_time_and_uses_the_page_size():
    point = sample({"status": "active", "ram": {"dirty-pages-rate": 10, "page-size": 65536}}, 1.23456)
    assert point["t"] == 1.235
    assert point["dirty_rate"] == 10 * 65536
    assert sample({"status": "active", "ram": {"dirty-pages-rate": 10}}, 0)["dirty_rate"] == 10 * 4096
    assert sample({}, 0) == {"t": 0, "status": None, "remaining": None, "transferred": None, "mbps": None,
                             "dirty_rate": 0, "passes": None, "throttle": 0}


# -- real migrations -------------------------------------------------------------------------

def test_migration_with_disk_mirror(pair):
    vms = pair()
    # Written after the mirror is READY: it reaches the target only if the switchover finishes the mirror.
    pattern, offset, length = AFTER_READY
    assert vms.src.execute("human-monitor-command", {
        "command-line": f'qemu-io -d /machine/peripheral/vd-root/virtio-backend "write -P {pattern} {offset} {length}"'
    }) == ""
    migration = SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE], sample_interval=0.2))
    stats = migration.run()

    assert stats["status"] == "completed"
    assert isinstance(stats["downtime_ms"], int) and stats["downtime_ms"] >= 0
    assert stats["passes"] >= 1
    assert stats["mirror_processed_bytes"] > 0
    assert stats["ram_total"] >= RAM_MB * MB
    assert stats["ram_normal_pages"] > 0
    assert stats["history"] and stats["history"] is migration.history
    assert {point["status"] for point in stats["history"]} <= {*ACTIVE, "completed"}
    assert stats["pre_switchover_time"] <= stats["mirrors_done_time"]
    assert stats["source_stop_time"] <= stats["completed_time"]
    assert stats["query_migrate"]["status"] == "completed"

    assert query_status(vms.src) == "postmigrate"
    assert wait_status(vms.tgt, "running") == "running"
    assert vms.src.execute("query-block-jobs") == []
    capabilities = {c["capability"]: c["state"] for c in vms.src.execute("query-migrate-capabilities")}
    assert capabilities["pause-before-switchover"] is True and capabilities["events"] is True

    # The guest RAM arrived: a region the firmware leaves alone holds the source file's bytes.
    dump = os.path.join(os.path.dirname(vms.ram_file), "target-ram")
    vms.tgt.execute("pmemsave", {"val": 8 * MB, "size": 8 * MB, "filename": dump})
    with open(vms.ram_file, "rb") as source_ram, open(dump, "rb") as target_ram:
        source_ram.seek(8 * MB)
        assert source_ram.read(8 * MB) == target_ram.read()

    quit_qemu(vms.src, vms.source)
    quit_qemu(vms.tgt, vms.target)
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", vms.images.source,
                              vms.images.target], capture_output=True, text=True, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "identical" in compare.stdout
    check = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern} {offset} {length}",
                            vms.images.target], capture_output=True, text=True, check=False)
    assert check.returncode == 0 and "verification failed" not in check.stdout, check.stdout


def test_migration_without_disks_does_not_pause_before_switchover(pair):
    vms = pair(disk=False)
    # Left on by an earlier run: the migration must switch it off, or QEMU would wait for a continue.
    vms.src.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "pause-before-switchover", "state": True}]})
    with vms.src.subscribe(["MIGRATION"]) as events:
        stats = SourceMigration(vms.src, MigrationSettings(uri=vms.uri, sample_interval=0.2)).run()
        seen = []
        while (event := events.get(0.1)) is not None:
            seen.append(event["data"]["status"])
    assert stats["status"] == "completed"
    assert stats["mirror_processed_bytes"] is None
    assert "pre-switchover" not in seen and seen[-1] == "completed"
    capabilities = {c["capability"]: c["state"] for c in vms.src.execute("query-migrate-capabilities")}
    assert capabilities["pause-before-switchover"] is False
    assert capabilities["events"] is True
    parameters = vms.src.execute("query-migrate-parameters")
    assert parameters["max-bandwidth"] == UNLIMITED_BANDWIDTH
    assert parameters["downtime-limit"] == 300
    assert query_status(vms.src) == "postmigrate"
    assert wait_status(vms.tgt, "running") == "running"


def fail_during_pre_copy(vms, fault) -> MigrationFailed:
    """Migrate with a mirrored disk, inject `fault` once pre-copy is active, return the failure.

    32 MiB of random guest RAM at 4 MiB/s: pre-copy lasts about 8 s unless the fault ends it.
    """
    watcher = when_active(vms.monitor, fault)
    started = time.monotonic()
    try:
        with pytest.raises(MigrationFailed) as caught:
            SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE], max_bandwidth=4 * MB,
                                                       sample_interval=0.2)).run()
    finally:
        watcher.thread.join(30)
    assert not watcher.problems, watcher.problems
    assert watcher.done.is_set()
    assert time.monotonic() - started < 6
    return caught.value


def test_target_killed_during_pre_copy(pair):
    vms = pair(source_monitor=True)
    failure = fail_during_pre_copy(vms, lambda _: vms.target.kill())
    assert failure.phase == "pre-copy"
    assert failure.source_running is True
    assert "rollback problems" not in failure.cause
    assert query_status(vms.src) == "running"
    assert vms.src.execute("query-migrate")["status"] not in ACTIVE
    assert leftovers(vms.src) == []
    assert failure.stats["history"]


def test_mirror_failure_during_pre_copy(pair):
    """The target's NBD server goes away and the guest writes: the mirror fails while RAM still moves."""
    vms = pair(source_monitor=True, target_monitor=True)

    def break_the_mirror(source_monitor):
        with QMPSession(vms.target_monitor, connect_timeout=5) as target:
            target.execute("block-export-del", {"id": "export-root", "mode": "hard"})
            target.execute("nbd-server-stop")
        source_monitor.execute("human-monitor-command", {
            "command-line": 'qemu-io -d /machine/peripheral/vd-root/virtio-backend "write -P 0x77 16M 1M"'})

    failure = fail_during_pre_copy(vms, break_the_mirror)
    assert failure.phase == "pre-copy"
    assert f"disk mirror {_mirror.job_id(NODE)} stopped" in failure.cause
    assert failure.source_running is True
    assert "rollback problems" not in failure.cause
    assert query_status(vms.src) == "running"
    # QEMU may still be in 'cancelling' here; see test_rollback_waits_until_the_migration_is_cancelled.
    assert wait_migration(vms.src) == "cancelled"
    assert leftovers(vms.src) == []


def test_source_killed_during_pre_copy(pair):
    vms = pair(disk=False, source_monitor=True)
    watcher = when_active(vms.monitor, lambda _: vms.source.kill())
    started = time.monotonic()
    try:
        with pytest.raises(MigrationFailed) as caught:
            SourceMigration(vms.src, MigrationSettings(uri=vms.uri, max_bandwidth=4 * MB, sample_interval=0.2)).run()
    finally:
        watcher.thread.join(30)
    assert not watcher.problems, watcher.problems
    assert time.monotonic() - started < 6
    failure = caught.value
    assert failure.phase == "pre-copy"
    assert failure.source_running is False
    assert "rollback problems" in failure.cause
    assert failure.stats["history"]


def test_stalled_link_fails_pre_copy(pair, tmp_path):
    """A target that accepts the connection but never reads: nothing errors, only the stall check can tell."""
    vms = pair(disk=False)
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(1)
        uri = f"tcp:127.0.0.1:{hole.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(MigrationFailed) as caught:
            SourceMigration(vms.src, MigrationSettings(uri=uri, stall_timeout=1.0, sample_interval=0.2)).run()
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 5
    assert caught.value.phase == "pre-copy"
    assert "no data moved" in caught.value.cause
    assert caught.value.source_running is True
    assert query_status(vms.src) == "running"
    assert vms.src.execute("query-migrate")["status"] == "cancelled"


def test_rollback_waits_until_the_migration_is_cancelled(pair):
    """A stream that stops being read and cannot be shut down (exec: into a command that does not read)."""
    vms = pair(disk=False)
    with pytest.raises(MigrationFailed) as caught:
        # The stall check fires after 0.5 s; QEMU can only finish cancelling once `sleep` exits, at 2 s.
        SourceMigration(vms.src, MigrationSettings(uri="exec:sleep 2", stall_timeout=0.5, sample_interval=0.1)).run()
    status = vms.src.execute("query-migrate")["status"]
    settled = wait_migration(vms.src)
    assert caught.value.phase == "pre-copy" and caught.value.source_running is True
    assert settled == "cancelled"
    # BUG (plugins/module_utils/_migration.py, ACTIVE / SourceMigration._cancel_migration): ACTIVE lacks
    # "cancelling", so _cancel_migration stops waiting as soon as QEMU says 'cancelling'; run() returns
    # (and the failure's stats say 'cancelling') while the migration is still being torn down; a retry
    # at that moment passes the "already active" check in _configure and then fails on QEMU's
    # "There's a migration process in progress" from migrate-set-capabilities.
    assert status == "cancelled", f"run() gave up while the migration was still {status!r}"
    assert caught.value.stats["status"] == "cancelled"


def test_setup_refuses_a_disk_without_a_ready_mirror(pair):
    vms = pair(mirror=False)
    with pytest.raises(MigrationFailed) as caught:
        SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE])).run()
    assert caught.value.phase == "setup"
    assert "disk mirror of disk-root is not ready" in caught.value.cause
    assert caught.value.source_running is True
    assert query_status(vms.src) == "running"
    assert "status" not in vms.src.execute("query-migrate"), "a migration was started"
    assert query_status(vms.tgt) == "inmigrate"


def test_setup_refusal_leaves_a_running_migration_alone(pair):
    vms = pair(disk=False)
    # Someone else's migration, slowed down so that it is still running when ours is refused.
    vms.src.execute("migrate-set-parameters", {"max-bandwidth": 1 * MB})
    vms.src.execute("migrate", {"uri": vms.uri})
    assert vms.src.execute("query-migrate")["status"] in ACTIVE
    with pytest.raises(MigrationFailed) as caught:
        SourceMigration(vms.src, MigrationSettings(uri=vms.uri)).run()
    assert caught.value.phase == "setup"
    assert "already" in caught.value.cause
    status = vms.src.execute("query-migrate")["status"]
    # BUG (plugins/module_utils/_migration.py, SourceMigration.run/_rollback): the refusal raised by
    # _configure() goes through _rollback(), whose _cancel_migration() cancels the migration that
    # was already running (and _abort_mirrors() would abort its disk mirrors).
    assert status in ACTIVE, f"refusing to start a second migration cancelled the running one (now {status!r})"
    vms.src.execute("migrate_cancel")


def test_switchover_mirror_failure_rolls_back(pair, monkeypatch):
    """The graceful mirror finish fails while the source is really paused before switchover."""
    vms = pair()
    seen = {}

    def failing_finish(session, nodes, deadline):
        seen.update(nodes=list(nodes), vm=query_status(session), migration=session.execute("query-migrate")["status"],
                    jobs=[job["device"] for job in session.execute("query-block-jobs")],
                    time_left=deadline - time.monotonic())
        raise QMPError("mirror livemig-mirror-disk-root did not complete: injected fault", "block-job-cancel")

    monkeypatch.setattr(_mirror, "finish_gracefully", failing_finish)
    with pytest.raises(MigrationFailed) as caught:
        SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE], switchover_timeout=5,
                                                   sample_interval=0.2)).run()
    assert seen["nodes"] == [NODE]
    assert seen["migration"] == "pre-switchover"
    assert seen["vm"] in ("paused", "finish-migrate")
    assert seen["jobs"] == [_mirror.job_id(NODE)]
    assert 0 < seen["time_left"] <= 5
    failure = caught.value
    assert failure.phase == "switchover"
    assert failure.source_running is True
    assert "injected fault" in failure.cause
    assert "rollback problems" not in failure.cause
    assert wait_status(vms.src, "running") == "running"
    assert vms.src.execute("query-migrate")["status"] == "cancelled"
    assert leftovers(vms.src) == []
    assert failure.stats["status"] == "cancelled"


def test_failure_after_continue_reports_the_real_source_state(pair, monkeypatch):
    """The target dies after the mirrors are finished, just before the device state is sent."""
    vms = pair()
    finish = _mirror.finish_gracefully

    def finish_then_kill_target(session, nodes, deadline):
        copied = finish(session, nodes, deadline)
        vms.target.kill()
        return copied

    monkeypatch.setattr(_mirror, "finish_gracefully", finish_then_kill_target)
    with pytest.raises(MigrationFailed) as caught:
        SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE], sample_interval=0.2)).run()
    failure = caught.value
    assert failure.phase == "switchover"
    deadline = time.monotonic() + 5
    while (status := query_status(vms.src)) == "finish-migrate" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert vms.src.execute("query-migrate")["status"] == "failed"
    # QEMU itself restarts a source that was running when a migration fails (migration_iteration_finish),
    # so after this failure the VM runs here again, without any `cont` from the plugin.
    assert status == "running"
    # BUG (plugins/module_utils/_migration.py, SourceMigration._rollback, the `if self._continued` branch):
    # it reports source_running=False without asking QEMU, although the VM is running on the source.
    assert failure.source_running == (status == "running"), (
        f"MigrationFailed.source_running is {failure.source_running} but the source VM is {status!r}")
