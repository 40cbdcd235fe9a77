from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils import _mirror
from ansible_collections.livemig.qemu.plugins.module_utils._migration import (
    MigrationFailed, MigrationSettings, MirrorTarget, SourceMigration, shared_bandwidth)
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import ACTIVE, UNLIMITED_BANDWIDTH
from ansible_collections.livemig.qemu.plugins.module_utils._paths import mirror_job
from ansible_collections.livemig.qemu.plugins.module_utils._progress import SAMPLE_KEYS, sample
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession

MB = 1 << 20
RAM_MB = 32
# The policy's clock, scaled to a guest whose passes take 0.2-0.5 s (production waits seconds).
FAST_POLICY = {"stall_passes": 2, "stall_seconds": 0.4, "settle_seconds": 0.4, "rate_window": 1.0}
# A cap under which the dirtying guest (8 MiB working set) never converges below a 300 ms downtime limit.
CAP = 16 * MB
PROGRESS_KEYS = (*SAMPLE_KEYS, "finished", "policy_actions")
NODE = "disk-root"
# Written into the source image before the mirror starts, and through the running source after it is READY.
BEFORE_MIRROR = ("0x5a", 1 * MB, 4 * MB)
AFTER_READY = ("0x33", 8 * MB, 1 * MB)


# -- helpers ---------------------------------------------------------------------------------

# A boot-sector guest that keeps dirtying memory: A20 on, a flat GDT, protected mode, then forever
# `for (p = 1 MiB; p < END; p += 4096) ++*(uint8_t *)p;`, END the little-endian dword at DIRTY_END.
# Assembled with GNU as (.code16/.code32) and ld -Ttext=0x7c00 --oformat binary.
DIRTY_CODE = bytes.fromhex(
    "fae4920c02e69231c08ed8660f0116587c0f20c06683c8010f22c066ea237c0000080066b810008ed8be00001000fe0681c6"
    "0010000081fe7856341272f0ebe90000000000000000ffff0000009acf00ffff00000092cf001700407c")
DIRTY_START, DIRTY_END = 1 * MB, 0x38
RANDOM_AREA = (24 * MB, 4 * MB)  # random bytes the dirtying guest never touches: checked on the target


def boot_sector(working_set):
    code = bytearray(DIRTY_CODE)
    code[DIRTY_END:DIRTY_END + 4] = (DIRTY_START + working_set).to_bytes(4, "little")
    return bytes(code).ljust(510, b"\0") + b"\x55\xaa"


def boot_disk_args(path, working_set):
    path.write_bytes(boot_sector(working_set).ljust(MB, b"\0"))
    return ["-drive", f"file={path},format=raw,if=none,id=boot", "-device", "ide-hd,drive=boot,bootindex=0"]


def wait_dirtying(session, timeout=10.0):
    """Until the guest runs its loop (past the firmware): the first byte it increments changes."""
    assert conftest.guest_keeps_changing(session, DIRTY_START, timeout=timeout), "the guest never reached its loop"


def random_area_arrived(vms):
    """The target's RAM holds the source file's random bytes (sent once, never dirtied)."""
    dump = os.path.join(os.path.dirname(vms.ram_file), "target-area")
    vms.tgt.execute("pmemsave", {"val": RANDOM_AREA[0], "size": RANDOM_AREA[1], "filename": dump})
    with open(vms.ram_file, "rb") as source_ram, open(dump, "rb") as target_ram:
        source_ram.seek(RANDOM_AREA[0])
        return source_ram.read(RANDOM_AREA[1]) == target_ram.read()


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


class ProgressReader:
    """Reads a progress file every 20 ms while a migration runs; `snapshots` holds each distinct content."""

    def __init__(self, path):
        self.path = path
        self.snapshots = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read)

    def _read(self):
        while not self._stop.wait(0.02):
            with contextlib.suppress(FileNotFoundError):
                with open(self.path, encoding="utf-8") as handle:
                    data = json.load(handle)  # a torn write would raise here and fail the test
                if not self.snapshots or self.snapshots[-1] != data:
                    self.snapshots.append(data)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def final(self):
        with open(self.path, encoding="utf-8") as handle:
            return json.load(handle)


def quit_qemu(session, vm):
    with contextlib.suppress(QMPError):
        session.execute("quit", timeout=5)
    vm.process.wait(10)


@pytest.fixture
def pair(qemu, tmp_path):
    """Start a source (running) and an incoming target; optionally mirror the source disk to the target."""
    sessions = contextlib.ExitStack()

    def start(disk=True, mirror=True, ram_pattern="random", source_monitor=False, target_monitor=False,
              guest=0, target_capabilities=(), mirror_speed=0, wait_ready=True):
        """guest: the MiB of RAM a boot-sector guest keeps dirtying (0: the firmware idles); the RAM then holds
        zeros except RANDOM_AREA. target_capabilities: switched on at the target before migrate-incoming.
        mirror="export": the target exports its disk (nbd_port), the mirror is left for the migration to start."""
        ram_file = str(tmp_path / "ram")
        with open(ram_file, "wb") as handle:
            if guest:
                contents = bytearray(RAM_MB * MB)
                contents[RANDOM_AREA[0]:RANDOM_AREA[0] + RANDOM_AREA[1]] = os.urandom(RANDOM_AREA[1])
                handle.write(contents)
            else:
                handle.write(os.urandom(RAM_MB * MB) if ram_pattern == "random" else bytes(RAM_MB * MB))
        ram = ["-machine", "pc,memory-backend=ram", "-m", str(RAM_MB)]
        source_args = [*ram, "-object", f"memory-backend-file,id=ram,size={RAM_MB}M,mem-path={ram_file},share=off"]
        target_args = [*ram, "-object", f"memory-backend-ram,id=ram,size={RAM_MB}M", "-incoming", "defer"]
        if guest:
            source_args += boot_disk_args(tmp_path / "source-boot.img", guest * MB)
            target_args += boot_disk_args(tmp_path / "target-boot.img", guest * MB)
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
        if target_capabilities:
            tgt.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": name, "state": True} for name in ("events", *target_capabilities)]})
        tgt.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = tgt.execute("query-migrate")["socket-address"][0]["port"]
        if guest:
            wait_dirtying(src)
        nbd_port = None
        if disk and mirror:
            nbd_port = free_port()
            address = {"type": "inet", "data": {"host": "127.0.0.1", "port": str(nbd_port)}}
            tgt.execute("nbd-server-start", {"addr": address})
            tgt.execute("block-export-add", {"type": "nbd", "id": "export-root", "node-name": NODE,
                                             "name": "root", "writable": True})
            if mirror != "export":
                _mirror.start_mirror(src, NODE, "127.0.0.1", nbd_port, "root", speed=mirror_speed)
            if wait_ready and mirror != "export":
                assert _mirror.wait_ready(src, NODE, time.monotonic() + 30)["ready"]
        return SimpleNamespace(source=source, target=target, src=src, tgt=tgt, uri=f"tcp:127.0.0.1:{port}",
                               images=images, ram_file=ram_file, monitor=monitor,
                               target_monitor=target_monitor_path, nbd_port=nbd_port)

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
    assert history[0] == {"t": 0.003, "phase": "pre-copy", "status": "setup", "remaining": None, "total": None,
                          "transferred": None, "mbps": None, "dirty_rate": 0, "passes": None, "throttle": 0,
                          "expected_downtime": 300, "downtime_limit_ms": None, "disk_remaining": 0, "disk_total": 0}
    assert history[1] == {"t": 1.004, "phase": "pre-copy", "status": "active", "remaining": 905121792,
                          "total": 1074069504, "transferred": 132915642, "mbps": 1063.3, "dirty_rate": 0, "passes": 1,
                          "throttle": 0, "expected_downtime": 300, "downtime_limit_ms": None, "disk_remaining": 0,
                          "disk_total": 0}
    assert history[2]["dirty_rate"] == 2560 * 4096 and history[2]["passes"] == 3 and history[2]["throttle"] == 20
    assert history[2]["expected_downtime"] == 412
    assert history[3]["status"] == "pre-switchover" and history[3]["remaining"] == 0
    assert [point["t"] for point in history] == sorted(point["t"] for point in history)
    moved = [point["transferred"] for point in history if point["transferred"] is not None]
    assert moved == sorted(moved)
    assert all(tuple(point) == SAMPLE_KEYS for point in history)


def test_sample_rounds_time_and_uses_the_page_size():
    point = sample({"status": "active", "ram": {"dirty-pages-rate": 10, "page-size": 65536}}, 1.23456)
    assert point["t"] == 1.235
    assert point["dirty_rate"] == 10 * 65536
    assert sample({"status": "active", "ram": {"dirty-pages-rate": 10}}, 0)["dirty_rate"] == 10 * 4096
    blank = sample({}, 0, "mirror-sync", 100, (5, 9))
    assert blank == {**dict.fromkeys(SAMPLE_KEYS), "t": 0, "phase": "mirror-sync", "dirty_rate": 0, "throttle": 0,
                     "downtime_limit_ms": 100, "disk_remaining": 5, "disk_total": 9}


def test_shared_bandwidth():
    cap = 100 * MB
    assert shared_bandwidth(cap, 0) == cap
    assert shared_bandwidth(cap, 30 * MB) == 70 * MB
    assert shared_bandwidth(cap, 95 * MB) == 10 * MB  # RAM keeps a tenth, however busy the disks
    assert shared_bandwidth(cap, 500 * MB) == 10 * MB


# -- real migrations -------------------------------------------------------------------------

def test_migration_with_disk_mirror(pair):
    vms = pair()
    # Written after the mirror is READY: it reaches the target only if the switchover finishes the mirror.
    pattern, offset, length = AFTER_READY
    assert vms.src.execute("human-monitor-command", {
        "command-line": f'qemu-io -d /machine/peripheral/vd-root/virtio-backend "write -P {pattern} {offset} {length}"'
    }) == ""
    progress = os.path.join(os.path.dirname(vms.ram_file), "vm.progress.json")
    migration = SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE], sample_interval=0.2,
                                                           progress_path=progress))
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
    assert stats["history"][0]["disk_total"] >= 64 * MB and stats["postcopy_started"] is False
    with open(progress, encoding="utf-8") as handle:
        final = json.load(handle)
    assert tuple(final) == (*PROGRESS_KEYS, "outcome", "message")
    assert final["finished"] is True and final["outcome"] == "completed" and final["policy_actions"] == []
    assert final["message"] == f"completed in {stats['total_time_ms']} ms, downtime {stats['downtime_ms']} ms"

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


def test_the_point_of_no_return_is_marked_while_the_source_waits_before_the_switchover(pair):
    vms = pair(disk=False)
    statuses_when_marked = []

    def mark():
        statuses_when_marked.append((vms.src.execute("query-migrate")["status"],
                                     vms.tgt.execute("query-status")["status"]))

    with vms.src.subscribe(["MIGRATION"]) as events:
        stats = SourceMigration(vms.src, MigrationSettings(uri=vms.uri, sample_interval=0.2,
                                                           before_point_of_no_return=mark)).run()
        seen = []
        while (event := events.get(0.1)) is not None:
            seen.append(event["data"]["status"])
    assert stats["status"] == "completed" and stats["mirror_processed_bytes"] == 0
    # Marked once, with the source paused at pre-switchover and the target still waiting for the device state.
    assert statuses_when_marked == [("pre-switchover", "inmigrate")]
    assert "pre-switchover" in seen and seen[-1] == "completed"
    parameters = vms.src.execute("query-migrate-parameters")
    assert parameters["max-bandwidth"] == UNLIMITED_BANDWIDTH
    assert parameters["downtime-limit"] == 100  # the auto policy starts low; it raises the limit only on a stall
    assert stats["policy"] == "auto" and stats["policy_actions"] == [] and stats["postcopy_started"] is False
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
    assert f"disk mirror {mirror_job(NODE)} stopped" in failure.cause
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


def test_a_mirror_still_syncing_is_waited_for(pair, tmp_path):
    """The mirror is not READY yet when the migration is asked for: sampled as mirror-sync, then migrated."""
    vms = pair(ram_pattern="zero", mirror_speed=128 * MB, wait_ready=False)  # 64 MiB: 0.5 s
    progress = str(tmp_path / "vm.progress.json")
    with ProgressReader(progress) as reader:
        stats = SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE], sample_interval=0.1,
                                                           progress_path=progress)).run()
    assert stats["status"] == "completed"
    syncing = [point for point in stats["history"] if point["phase"] == "mirror-sync"]
    assert len(syncing) >= 2 and all(point["status"] is None for point in syncing)
    assert syncing[0]["disk_remaining"] > syncing[-1]["disk_remaining"] and syncing[0]["disk_total"] >= 64 * MB
    assert stats["history"][len(syncing)]["phase"] == "pre-copy"
    assert any(snapshot["phase"] == "mirror-sync" and not snapshot["finished"] for snapshot in reader.snapshots)
    assert wait_status(vms.tgt, "running") == "running"


def test_the_migration_starts_the_mirrors_itself_and_migrates_once_they_are_in_sync(pair):
    """One job: the mirror into the target's export is started, sampled until READY, then RAM moves; the target's
    disk ends identical."""
    vms = pair(mirror="export")
    target = MirrorTarget(NODE, "127.0.0.1", vms.nbd_port, "root", speed=64 * MB)  # 64 MiB disk: about 1 s
    migration = SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE],
                                                           mirrors_to_start=[target], mirror_timeout=30))
    stats = migration.run()
    assert stats["status"] == "completed"
    assert migration.mirrors_ready[NODE]["ready"] and migration.mirrors_ready[NODE]["len"] >= 4 * MB
    remaining = [point["disk_remaining"] for point in migration.mirror_history]
    assert len(remaining) >= 3 and remaining[0] > remaining[-1], remaining
    assert [point["phase"] for point in stats["history"][:2]] == ["mirror-sync", "mirror-sync"]
    assert wait_status(vms.tgt, "running") == "running"
    quit_qemu(vms.tgt, vms.target)
    quit_qemu(vms.src, vms.source)
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", vms.images.source,
                              vms.images.target], capture_output=True, text=True, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def test_a_mirror_whose_target_stops_answering_fails_after_the_stall_timeout_and_the_source_runs_on(pair):
    """A frozen NBD target (SIGSTOP: the connection stays up, nothing errors) stalls the mirror: after the stall
    timeout the job fails in mirror-sync, the mirror is gone and the VM keeps running here."""
    vms = pair(mirror="export")
    target = MirrorTarget(NODE, "127.0.0.1", vms.nbd_port, "root", speed=4 * MB)
    migration = SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE],
                                                           mirrors_to_start=[target], stall_timeout=1.5))
    freezer = threading.Timer(0.5, os.kill, (vms.target.process.pid, signal.SIGSTOP))
    freezer.start()
    try:
        with pytest.raises(MigrationFailed) as caught:
            migration.run()
    finally:
        freezer.join()
        os.kill(vms.target.process.pid, signal.SIGCONT)
    assert caught.value.phase == "mirror-sync" and caught.value.source_running is True
    assert "copied nothing for 1.5s" in caught.value.cause
    assert query_status(vms.src) == "running"
    assert leftovers(vms.src) == []


def test_a_mirror_not_in_sync_within_its_timeout_fails_with_the_mirror_timeout(pair):
    vms = pair(mirror="export")
    target = MirrorTarget(NODE, "127.0.0.1", vms.nbd_port, "root", speed=8 * MB)  # 64 MiB: 8 s
    with pytest.raises(MigrationFailed) as caught:
        SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE], mirrors_to_start=[target],
                                                   mirror_timeout=1.0)).run()
    assert caught.value.phase == "mirror-sync"
    assert "not in sync after 1s (the mirror timeout)" in caught.value.cause
    assert query_status(vms.src) == "running" and leftovers(vms.src) == []


def test_a_mirror_of_a_disk_the_vm_lacks_is_refused_before_anything_starts(pair):
    vms = pair(mirror="export")
    target = MirrorTarget("disk-data", "127.0.0.1", vms.nbd_port, "data")
    with pytest.raises(MigrationFailed) as caught:
        SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=["disk-data"],
                                                   mirrors_to_start=[target])).run()
    assert "no block node disk-data" in caught.value.cause
    assert query_status(vms.src) == "running" and leftovers(vms.src) == []
    assert "status" not in vms.src.execute("query-migrate"), "a migration was started"


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
    assert seen["jobs"] == [mirror_job(NODE)]
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


def test_a_source_that_qemu_restarts_after_migrate_continue_is_paused_again(pair, monkeypatch):
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
    assert failure.phase == "switchover" and failure.target_may_have_run is True
    assert vms.src.execute("query-migrate")["status"] == "failed"
    # QEMU itself restarts a source that was running when a migration fails (migration_iteration_finish), though
    # the device state may have reached a target that runs the VM: the source is paused again at once.
    assert "QEMU restarted the source VM by itself; it was paused again at once" in failure.cause, failure.cause
    assert [action["action"] for action in failure.stats["policy_actions"]] == ["stop-source"]
    time.sleep(0.5)
    assert query_status(vms.src) == "paused" and failure.source_running is False


# -- convergence -----------------------------------------------------------------------------

def test_a_stalled_migration_raises_the_downtime_limit_then_aborts_with_the_rates(pair, tmp_path):
    """The guest dirties 8 MiB over and over at 16 MiB/s: no downtime limit up to 300 ms lets it finish."""
    vms = pair(disk=False, guest=8)
    progress = str(tmp_path / "vm.progress.json")
    settings = MigrationSettings(uri=vms.uri, max_bandwidth=CAP, downtime_limit_ms=300, sample_interval=0.2,
                                 progress_path=progress, policy_overrides=FAST_POLICY)
    with ProgressReader(progress) as reader, pytest.raises(MigrationFailed) as caught:
        SourceMigration(vms.src, settings).run()
    failure = caught.value
    assert failure.phase == "pre-copy" and failure.source_running is True
    match = re.search(r"the guest dirties (\d+\.\d) MiB/s, the link carries (\d+\.\d) MiB/s", failure.cause)
    assert match, failure.cause
    assert 12 < float(match[2]) < 20 and float(match[1]) > 8
    assert "downtime limit 300 ms" in failure.cause and "rollback problems" not in failure.cause
    actions = failure.stats["policy_actions"]
    assert [action["action"] for action in actions] == ["set-parameters", "set-parameters", "abort"]
    assert [action["parameters"] for action in actions[:2]] == [{"downtime-limit": 200}, {"downtime-limit": 300}]
    assert all(action["reason"] for action in actions)
    limits = [point["downtime_limit_ms"] for point in failure.stats["history"]]
    assert limits[0] == 100 and limits == sorted(limits) and limits[-1] == 300
    assert failure.stats["postcopy_started"] is False and failure.stats["policy"] == "auto"
    assert query_status(vms.src) == "running"
    assert vms.src.execute("query-migrate")["status"] == "cancelled"
    wait_dirtying(vms.src)  # the guest still runs here

    running = [snapshot for snapshot in reader.snapshots if not snapshot["finished"]]
    assert running and all(tuple(snapshot) == PROGRESS_KEYS for snapshot in running)
    assert {snapshot["phase"] for snapshot in running} == {"pre-copy"}
    assert any(snapshot["status"] == "active" and snapshot["remaining"] for snapshot in running)
    assert any(snapshot["policy_actions"] for snapshot in running)
    final = reader.final()
    assert tuple(final) == (*PROGRESS_KEYS, "outcome", "message")
    assert final["finished"] is True and final["outcome"] == "failed"
    assert "pre-copy cannot converge" in final["message"]
    assert final["policy_actions"][0].endswith(f"downtime-limit=200 ({actions[0]['reason']})")
    assert final["policy_actions"][-1].split(" ", 1)[1].startswith("abort (pre-copy cannot converge")
    assert os.listdir(tmp_path).count("vm.progress.json") == 1
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_a_bandwidth_cap_is_shared_with_the_disk_mirrors(pair):
    """While the guest writes ~15 MiB/s to its disk, RAM gets what the mirror leaves of the cap."""
    vms = pair(guest=8, source_monitor=True)
    stop = threading.Event()

    def write():
        with QMPSession(vms.monitor, connect_timeout=5) as monitor:
            offset = 0
            while not stop.wait(0.05):
                monitor.execute("human-monitor-command", {"command-line": "qemu-io -d "
                                f'/machine/peripheral/vd-root/virtio-backend "write -P 0x44 {offset}M 1M"'})
                offset = (offset + 1) % 32

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with pytest.raises(MigrationFailed) as caught:
            SourceMigration(vms.src, MigrationSettings(uri=vms.uri, mirrored_nodes=[NODE], max_bandwidth=CAP,
                                                       convergence="defaults", timeout=1.6,
                                                       sample_interval=0.2)).run()
    finally:
        stop.set()
        writer.join(10)
    failure = caught.value
    assert failure.phase == "pre-copy" and failure.source_running is True
    assert "the limit set by the timeout option (1.6s)" in failure.cause
    assert failure.stats["timeout_limit"] == "timeout option" and failure.stats["effective_timeout_s"] == 1.6
    shares = [action for action in failure.stats["policy_actions"] if "max-bandwidth" in action["parameters"]]
    assert shares and all("the disk mirrors use" in action["reason"] for action in shares)
    lowest = min(action["parameters"]["max-bandwidth"] for action in shares)
    assert CAP // 10 <= lowest < CAP * 0.8
    history = failure.stats["history"]
    assert history[-1]["disk_total"] >= 64 * MB and all(point["disk_remaining"] is not None for point in history)
    assert query_status(vms.src) == "running" and leftovers(vms.src) == [], failure.cause


def test_the_timeout_scales_with_the_vm_size(pair):
    """16 MiB dirtied over and over, a 10 ms downtime limit: QEMU's own settings never converge."""
    vms = pair(disk=False, guest=16)
    settings = MigrationSettings(uri=vms.uri, convergence="defaults", downtime_limit_ms=10, sample_interval=0.2,
                                 timeout_base_s=0.5, timeout_min_rate=1 << 40)
    started = time.monotonic()
    with pytest.raises(MigrationFailed) as caught:
        SourceMigration(vms.src, settings).run()
    assert time.monotonic() - started < 3
    failure = caught.value
    assert failure.phase == "pre-copy" and failure.source_running is True
    assert "the limit set by the limit scaled to the VM's size (0.5s: 0.5s + 32 MiB RAM and 0 MiB disk" \
        in failure.cause
    assert failure.stats["timeout_limit"] == "size-scaled" and failure.stats["effective_timeout_s"] == 0.5
    assert query_status(vms.src) == "running"


def test_defaults_keep_qemus_bandwidth_and_nothing_is_left_over(pair):
    """convergence=defaults is QEMU's own behaviour; capabilities and throttle left by an earlier run are reset."""
    vms = pair(disk=False, ram_pattern="zero")
    vms.src.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "auto-converge", "state": True}, {"capability": "xbzrle", "state": True}]})
    vms.src.execute("migrate-set-parameters", {"max-bandwidth": MB, "max-cpu-throttle": 50})
    stats = SourceMigration(vms.src, MigrationSettings(uri=vms.uri, convergence="defaults", capabilities=["xbzrle"],
                                                       parameters={"xbzrle-cache-size": str(8 * MB)},
                                                       sample_interval=0.2)).run()
    assert stats["status"] == "completed" and stats["policy"] == "defaults"
    capabilities = {c["capability"]: c["state"] for c in vms.src.execute("query-migrate-capabilities")}
    assert capabilities["xbzrle"] is True and capabilities["auto-converge"] is False
    parameters = vms.src.execute("query-migrate-parameters")
    assert parameters["max-bandwidth"] == 128 * MB and parameters["downtime-limit"] == 300
    assert parameters["max-cpu-throttle"] == 99 and parameters["xbzrle-cache-size"] == 8 * MB
    assert wait_status(vms.tgt, "running") == "running"


@pytest.mark.parametrize("request_, message", [
    ({"capabilities": ["bogus"]}, "unknown migration capabilities bogus (this QEMU knows "),
    ({"parameters": {"bogus-limit": 1}}, "unknown migration parameters bogus-limit (this QEMU knows "),
    ({"parameters": {"downtime-limit": 1}}, "set downtime-limit with the option downtime_limit_ms"),
    ({"convergence": "postcopy-early"}, "needs postcopy-ram enabled on both sides"),
    ({"convergence": "fast"}, "unknown convergence policy 'fast'"),
])
def test_impossible_requests_are_refused_before_anything_changes(pair, request_, message):
    vms = pair(disk=False, ram_pattern="zero")
    with pytest.raises(MigrationFailed) as caught:
        SourceMigration(vms.src, MigrationSettings(uri=vms.uri, **request_)).run()
    assert caught.value.phase == "setup" and caught.value.source_running is True
    assert message in caught.value.cause
    assert "status" not in vms.src.execute("query-migrate"), "a migration was started"


def test_a_source_paused_before_the_migration_stays_paused_after_a_rollback(pair):
    """The rollback resumes a source the migration paused, never one that was paused before it started."""
    vms = pair(disk=False)
    vms.src.execute("stop")
    wait_status(vms.src, "paused")
    vms.target.kill()
    with pytest.raises(MigrationFailed) as caught:
        SourceMigration(vms.src, MigrationSettings(uri=vms.uri, sample_interval=0.2)).run()
    assert caught.value.phase == "pre-copy"
    assert caught.value.source_running is False
    assert query_status(vms.src) == "paused"
