# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The source side of a live migration, from `migrate` to `completed`, driven by QMP events.

Private to the livemig.qemu collection. Everything from the source STOP to the
end of the switchover happens here, in one process reacting to events: no
Ansible task boundary and no poll interval sits inside the downtime.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _mirror
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession, event_time

UNLIMITED_BANDWIDTH = 1 << 40  # bytes/s; QEMU's own default cap is 128 MiB/s
ACTIVE = ("setup", "active", "cancelling", "pre-switchover", "device", "wait-unplug",
          "postcopy-active", "postcopy-paused", "postcopy-recover")
EVENTS = ("MIGRATION", "MIGRATION_PASS", "STOP", "RESUME", "BLOCK_JOB_ERROR", *_mirror.JOB_END_EVENTS)


PAUSED = ("paused", "finish-migrate", "postmigrate")


def cancel_migration(session: QMPSession, timeout: float = 30.0) -> bool:
    """Cancel a migration in progress and wait until QEMU has stopped it; True if there was one."""
    if session.execute("query-migrate").get("status") not in ACTIVE:
        return False
    session.execute("migrate_cancel")
    deadline = time.monotonic() + timeout
    while session.execute("query-migrate").get("status") in ACTIVE:
        if time.monotonic() > deadline:
            raise QMPError("the migration did not stop after migrate_cancel", "migrate_cancel")
        time.sleep(0.05)
    return True


def resume_if_paused(session: QMPSession) -> bool:
    """Resume a source the migration left paused. Only when the target provably never ran."""
    if session.execute("query-status")["status"] not in PAUSED:
        return False
    session.execute("cont")
    return True


class MigrationFailed(Exception):
    """The migration did not complete. `phase` says where; `source_running` whether the VM still runs here."""

    def __init__(self, phase: str, cause: str, source_running: bool, stats: dict[str, Any] | None = None):
        super().__init__(f"migration failed during {phase}: {cause}")
        self.phase = phase
        self.cause = cause
        self.source_running = source_running
        self.stats = stats or {}


@dataclass
class MigrationSettings:
    uri: str
    mirrored_nodes: list[str] = field(default_factory=list)
    max_bandwidth: int = 0
    downtime_limit_ms: int = 300
    capabilities: dict[str, bool] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout: float = 3600.0
    stall_timeout: float = 60.0
    switchover_timeout: float = 60.0
    sample_interval: float = 1.0


def sample(info: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """One point of the progress history, from a query-migrate answer."""
    ram = info.get("ram", {})
    page_size = ram.get("page-size", 4096)
    return {"t": round(elapsed, 3), "status": info.get("status"),
            "remaining": ram.get("remaining"), "transferred": ram.get("transferred"),
            "mbps": ram.get("mbps"), "dirty_rate": ram.get("dirty-pages-rate", 0) * page_size,
            "passes": ram.get("dirty-sync-count"), "throttle": info.get("cpu-throttle-percentage", 0)}


class SourceMigration:
    """Runs one migration on the source QEMU; `run()` returns the statistics or raises MigrationFailed."""

    def __init__(self, session: QMPSession, settings: MigrationSettings):
        self.session = session
        self.settings = settings
        self.phase = "setup"
        self.history: list[dict[str, Any]] = []
        self.marks: dict[str, float] = {}
        self._started = 0.0
        self._continued = False

    def run(self) -> dict[str, Any]:
        self._started = time.monotonic()
        status = self.session.execute("query-migrate").get("status")
        if status in ACTIVE:
            raise MigrationFailed("setup", f"a migration is already {status} on this VM", True)
        with self.session.subscribe(EVENTS) as events:
            try:
                self._configure()
                self.phase = "pre-copy"
                self.session.execute("migrate", {"uri": self.settings.uri})
                self._follow(events)
            except (QMPError, MigrationFailed) as exc:
                raise self._rollback(exc) from exc
        self._settled_status()  # the run state follows the completed event: leave with it at postmigrate
        return self._statistics()

    def _configure(self) -> None:
        capabilities = {**self.settings.capabilities, "events": True}
        if self.settings.mirrored_nodes:
            capabilities["pause-before-switchover"] = True  # the mirrors are finished at that pause
        capabilities.setdefault("pause-before-switchover", False)
        self.session.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": name, "state": state} for name, state in sorted(capabilities.items())]})
        parameters = {"max-bandwidth": self.settings.max_bandwidth or UNLIMITED_BANDWIDTH,
                      "downtime-limit": self.settings.downtime_limit_ms, **self.settings.parameters}
        self.session.execute("migrate-set-parameters", parameters)
        for node in self.settings.mirrored_nodes:
            job = _mirror.find_job(self.session, _mirror.job_id(node))
            if job is None or not job.get("ready"):
                raise MigrationFailed("setup", f"the disk mirror of {node} is not ready", True)

    def _follow(self, events: Any) -> None:
        deadline = self._started + self.settings.timeout
        next_sample = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_sample:
                self.history.append(sample(self.session.execute("query-migrate"), now - self._started))
                next_sample = now + self.settings.sample_interval
                self._check_stall(now)
            if now > deadline:
                raise MigrationFailed(self.phase, f"not complete after {self.settings.timeout:.0f}s", True)
            event = events.get(min(next_sample, deadline) - time.monotonic())
            if event is None:
                continue
            if self._handle(event):
                return

    def _check_stall(self, now: float) -> None:
        """Fail when no RAM moves for stall_timeout seconds: a dead link never errors by itself."""
        moved = [point for point in self.history if point["transferred"] is not None]
        if not moved:
            return
        latest = moved[-1]["transferred"]
        since = next((point["t"] for point in moved if point["transferred"] == latest), moved[-1]["t"])
        if now - self._started - since >= self.settings.stall_timeout:
            raise MigrationFailed(self.phase, f"no data moved for {self.settings.stall_timeout:g}s "
                                  "(is the migration link down?)", True)

    def _handle(self, event: dict[str, Any]) -> bool:
        """React to one event; True when the migration has completed."""
        name, data = event["event"], event.get("data", {})
        if name == "STOP":
            self.marks.setdefault("stop", event_time(event))
        elif name == "MIGRATION":
            status = data["status"]
            if status == "pre-switchover":
                self._switchover()
            elif status == "completed":
                self.marks["completed"] = event_time(event)
                return True
            elif status in ("failed", "cancelled"):
                error = self.session.execute("query-migrate").get("error-desc", status)
                raise MigrationFailed(self.phase, f"QEMU reports the migration {status}: {error}",
                                      not self._continued)
        elif name in ("BLOCK_JOB_ERROR", *_mirror.JOB_END_EVENTS) and self.phase == "pre-copy" \
                and self._is_our_mirror(data):
            raise MigrationFailed(self.phase, f"disk mirror {data['device']} stopped: "
                                  f"{data.get('error') or name}", True)
        return False

    def _is_our_mirror(self, data: dict[str, Any]) -> bool:
        return data.get("device") in {_mirror.job_id(node) for node in self.settings.mirrored_nodes}

    def _switchover(self) -> None:
        """The source is paused: finish the disk mirrors, then let the device state go."""
        self.phase = "switchover"
        self.marks["pre_switchover"] = time.time()
        deadline = time.monotonic() + self.settings.switchover_timeout
        self.marks["mirror_processed_bytes"] = sum(_mirror.finish_gracefully(
            self.session, self.settings.mirrored_nodes, deadline).values())
        self.marks["mirrors_done"] = time.time()
        self._continued = True
        self.session.execute("migrate-continue", {"state": "pre-switchover"})

    def _rollback(self, failure: Exception) -> MigrationFailed:
        """Undo a migration that failed before the target could run; never resume once it might have."""
        phase = getattr(failure, "phase", self.phase)
        cause = getattr(failure, "cause", str(failure))
        if self._continued:
            # The device state may have reached the target: never resume here, report what QEMU did.
            # QEMU restarts a source whose migration failed late.
            running = self._settled_status() == "running"
            return MigrationFailed(phase, cause, running, self._statistics_safely())
        notes = []
        steps = (("cancel migration", lambda: cancel_migration(self.session)),
                 ("abort mirrors", self._abort_mirrors),
                 ("resume source", lambda: resume_if_paused(self.session)))
        for what, step in steps:
            try:
                step()
            except QMPError as exc:
                notes.append(f"{what}: {exc}")
        running = self._source_running()
        if notes:
            cause = f"{cause}; rollback problems: {'; '.join(notes)}"
        return MigrationFailed(phase, cause, running, self._statistics_safely())

    def _abort_mirrors(self) -> None:
        for node in self.settings.mirrored_nodes:
            _mirror.abort(self.session, node)

    def _settled_status(self, timeout: float = 10.0) -> str | None:
        """The source's run state once it has left finish-migrate (bounded wait); None if QEMU is gone."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.session.execute("query-status")["status"]
            except QMPError:
                return None
            if status != "finish-migrate" or time.monotonic() > deadline:
                return status
            time.sleep(0.02)

    def _source_running(self) -> bool:
        try:
            return self.session.execute("query-status")["status"] == "running"
        except QMPError:
            return False

    def _statistics_safely(self) -> dict[str, Any]:
        try:
            return self._statistics()
        except QMPError:
            return {"history": self.history}

    def _statistics(self) -> dict[str, Any]:
        info = self.session.execute("query-migrate")
        ram = info.get("ram", {})
        return {
            "status": info.get("status"),
            "total_time_ms": info.get("total-time"),
            "downtime_ms": info.get("downtime"),
            "setup_time_ms": info.get("setup-time"),
            "ram_transferred": ram.get("transferred"),
            "ram_total": ram.get("total"),
            "ram_duplicate_pages": ram.get("duplicate"),
            "ram_normal_pages": ram.get("normal"),
            "passes": ram.get("dirty-sync-count"),
            "mirror_processed_bytes": self.marks.get("mirror_processed_bytes"),
            "source_stop_time": self.marks.get("stop"),
            "pre_switchover_time": self.marks.get("pre_switchover"),
            "mirrors_done_time": self.marks.get("mirrors_done"),
            "completed_time": self.marks.get("completed"),
            "wall_time_s": round(time.monotonic() - self._started, 3),
            "history": self.history,
            "query_migrate": info,
        }
