# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The source side of a live migration, from `migrate` to `completed`, driven by QMP events.

Private to the livemig.qemu collection. Everything from the source STOP to the
end of the switchover happens here, in one process reacting to events: no
Ansible task boundary and no poll interval sits inside the downtime.

Once a second it samples query-migrate and the disk mirror jobs, writes the
sample to a progress file (`_progress`), shares a bandwidth cap between RAM and the
mirrors, and lets the convergence policy (`_convergence`) raise the downtime limit,
throttle the guest, switch to post-copy or give up.

In post-copy a broken link pauses the migration (postcopy-paused); with a recovery
URI it is resumed there (`migrate` with resume=true, once a second) until QEMU takes
it or recovery_timeout passes. A link that silently drops everything makes no error:
a post-copy that moves no byte for postcopy_stall_seconds is paused on purpose
(`migrate-pause`), then recovered the same way.
"""
from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _mirror, _progress, _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._convergence import (
    MIB, MIN_EXPECTED_RATE, Abort, Action, ConvergencePolicy, SetParameters, StartPostcopy, completion_timeout,
    make_policy, mib_s)
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import (
    ACTIVE, POSTCOPY, POSTCOPY_RECOVERY, UNLIMITED_BANDWIDTH, abort_mirrors, cancel, check_request,
    migration_status, resume_if_paused, run_state, set_capabilities, settled_state, undo, with_notes)
from ansible_collections.livemig.qemu.plugins.module_utils._paths import mirror_job
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession, event_time

QEMU_DEFAULT_BANDWIDTH = 128 * MIB  # QEMU's own max-bandwidth
# QEMU's defaults, set at every start so that a throttle raised by an earlier run does not carry over.
THROTTLE_DEFAULTS = {"cpu-throttle-initial": 20, "cpu-throttle-increment": 10, "max-cpu-throttle": 99}
EVENTS = ("MIGRATION", "MIGRATION_PASS", "STOP", "RESUME", "BLOCK_JOB_READY", "BLOCK_JOB_ERROR",
          *_mirror.JOB_END_EVENTS)
# The state machine sets these itself, from MigrationSettings.max_bandwidth, downtime_limit_ms and tls.
MANAGED_PARAMETERS = {"max-bandwidth": "max_bandwidth", "downtime-limit": "downtime_limit_ms",
                      **_tlsqemu.MANAGED_PARAMETERS}
SHARE_FLOOR = 0.10  # RAM keeps at least this part of a bandwidth cap the disk mirrors share
SHARE_STEP = 0.10  # max-bandwidth changes only when the share moves by more than this
SHARE_WINDOW = 1.0  # seconds over which the mirrors' rate is measured for the share
HISTORY_POINTS = 1200  # samples kept in the statistics; beyond, the older ones are thinned out
RECOVERY_RETRY = 1.0  # seconds between two attempts to resume a paused post-copy
RECOVERED = ("postcopy-active", "completed")  # a paused post-copy runs again (postcopy-recover is still on the way)


class Phase(enum.Enum):
    """Where the migration stands: the name it is reported by, and whether the target may have run the VM."""
    SETUP = ("setup", False)
    MIRROR_SYNC = ("mirror-sync", False)
    PRE_COPY = ("pre-copy", False)
    SWITCHOVER = ("switchover", False)  # paused at pre-switchover, the mirrors finish: nothing has left yet
    DEVICE_STATE = ("switchover", True)  # migrate-continue sent: the device state may reach the target
    POST_COPY = ("post-copy", True)  # the target runs the guest and pulls the rest of its memory from here

    def __init__(self, reported: str, target_may_run: bool):
        self.reported = reported
        self.target_may_run = target_may_run


class MigrationFailed(LivemigError):
    """The migration did not complete; `statistics` (in `details`) hold what was measured until then."""

    def __init__(self, phase: Phase, cause: str, source_running: bool, stats: dict[str, Any] | None = None):
        super().__init__(f"migration failed during {phase.reported}: {cause}", phase=phase.reported,
                         source_running=source_running, target_may_have_run=phase.target_may_run,
                         details={"statistics": stats or {}})
        self.cause = cause
        self.stage = phase

    @property
    def stats(self) -> dict[str, Any]:
        return self.details["statistics"]


@dataclass(frozen=True)
class MirrorTarget:
    """Where one disk's mirror writes: the target's NBD export of it."""
    node: str
    host: str
    port: int
    export: str
    copy_mode: str = "background"
    speed: int = 0


@dataclass
class MigrationSettings:
    uri: str
    mirrored_nodes: list[str] = field(default_factory=list)
    mirrors_to_start: list[MirrorTarget] = field(default_factory=list)  # started here, before the RAM moves
    mirror_timeout: float | None = None  # how long the mirrors may take to reach READY; None: the whole timeout
    max_bandwidth: int = 0  # bytes/s for RAM and the disk mirrors together; 0: no cap
    downtime_limit_ms: int = 300  # the policy's target (auto), or the fixed limit (defaults)
    convergence: str = "auto"  # defaults | auto | postcopy-early
    capabilities: list[str] = field(default_factory=list)  # switched on besides events (and the pause)
    parameters: dict[str, Any] = field(default_factory=dict)
    tls: _tlsqemu.Client | None = None  # its credentials are in QEMU already; None: cleartext
    timeout: float = 3600.0  # the caller's limit; a smaller one scaled to the VM's size may apply
    stall_timeout: float = 60.0
    switchover_timeout: float = 60.0
    sample_interval: float = 0.1  # 10 Hz while RAM moves: a sub-second migration still draws a curve
    progress_path: str | None = None
    policy_overrides: dict[str, Any] = field(default_factory=dict)  # ConvergenceSettings fields (tests, tuning)
    timeout_base_s: float = 60.0  # the size-scaled limit: base + size / rate
    timeout_min_rate: float = MIN_EXPECTED_RATE
    recovery_uri: str | None = None  # where the target listens to resume a paused post-copy; None: no recovery
    recovery_timeout: float = 120.0  # how long a paused post-copy is tried to be resumed
    postcopy_stall_seconds: float = 3.0  # post-copy without a byte moved this long: the link is dead, pause it
    # Called, and must have made it durable, before anything is sent that lets the target run the VM.
    before_point_of_no_return: Callable[[], None] = lambda: None


def _keep(samples: list[dict[str, Any]], point: dict[str, Any]) -> None:
    """Append; past HISTORY_POINTS (a long move) every other older sample goes, the latest stay."""
    samples.append(point)
    if len(samples) > HISTORY_POINTS:
        recent = HISTORY_POINTS // 4
        samples[:-recent] = samples[:-recent:2]


def shared_bandwidth(cap: int, mirror_rate: float) -> int:
    """RAM's part of a bandwidth cap it shares with the disk mirrors: what they leave, never under a tenth."""
    return int(max(cap - mirror_rate, cap * SHARE_FLOOR))


class SourceMigration:
    """Runs one migration on the source QEMU; `run()` returns the statistics or raises MigrationFailed."""

    def __init__(self, session: QMPSession, settings: MigrationSettings):
        self.session = session
        self.settings = settings
        self.phase = Phase.SETUP
        self.history: list[dict[str, Any]] = []
        self.marks: dict[str, float] = {}
        self.actions: list[dict[str, Any]] = []  # what the policy and the bandwidth share did, in order
        self.policy: ConvergencePolicy | None = None
        self.parameters: dict[str, Any] = {}
        self.timeout = settings.timeout
        self.timeout_limit = "timeout option"
        self._timeout_text = f"the timeout option ({settings.timeout:g}s)"
        self.downtime_limit_ms: int | None = None
        self.bandwidth: int | None = None
        self._started = 0.0
        self._epoch = 0.0
        self._postcopy_requested = False  # migrate-start-postcopy sent: QEMU may enter post-copy at any moment
        self._failure_outcome = "failed"  # or "cancelled", by a migrate_cancel from another monitor
        self._was_running = True  # a source paused before the migration is not resumed by its rollback
        self._disk_total = 0
        self._mirror_mark: tuple[float, int] | None = None
        self._latest: dict[str, Any] | None = None
        self.recoveries: list[dict[str, Any]] = []  # each paused post-copy: {paused_at, resumed_at, attempts}
        self._paused_seconds = 0.0  # spent resuming paused post-copies: the time limit grows by it
        self._stall_mark = 0.0  # the stall check counts from here (the end of the last recovery)
        self._moved: tuple[int, float] | None = None  # (bytes transferred, when that figure was first seen)
        self.mirrors_ready: dict[str, dict[str, Any]] = {}  # each mirror's progress as it reached READY, by node
        self.mirror_history: list[dict[str, Any]] = []  # {t (epoch), disk_remaining, disk_total} until all READY

    # -- the sequence ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self._started = time.monotonic()
        self._epoch = time.time()  # history times are seconds since the start; the progress file's are epoch
        status = self.session.execute("query-migrate").get("status")
        if status in ACTIVE:  # someone else's migration: touch nothing, not even the progress file
            raise MigrationFailed(Phase.SETUP, f"a migration is already {status} on this VM", True)
        self._was_running = run_state(self.session) == "running"
        try:
            self._check_request()
            with self.session.subscribe(EVENTS) as events:
                try:
                    self._start_mirrors()
                    self._limit_time()
                    self._wait_mirrors(events)
                    self._configure()
                    self.phase = Phase.PRE_COPY
                    self.session.execute("migrate", {"uri": self.settings.uri})
                    self._follow(events)
                except (QMPError, MigrationFailed) as exc:
                    raise self._rollback(exc) from exc
        except MigrationFailed as failure:
            self._finish(self._failure_outcome, str(failure))
            raise
        settled_state(self.session)  # the run state follows the completed event: leave with it at postmigrate
        statistics = self._statistics()
        self._finish("completed", _progress.completion(statistics))
        return statistics

    def _check_request(self) -> None:
        """Refuse what cannot work before changing anything."""
        settings = self.settings
        try:
            self.parameters = check_request(self.session, settings.capabilities, settings.parameters,
                                            MANAGED_PARAMETERS)
            throttle = {**THROTTLE_DEFAULTS, **self.parameters}
            self.policy = make_policy(
                settings.convergence, max_downtime_ms=settings.downtime_limit_ms,
                auto_converge="auto-converge" in settings.capabilities,
                postcopy="postcopy-ram" in settings.capabilities,
                max_cpu_throttle=throttle["max-cpu-throttle"], cpu_throttle_initial=throttle["cpu-throttle-initial"],
                cpu_throttle_increment=throttle["cpu-throttle-increment"], **settings.policy_overrides)
        except (ValueError, TypeError, QMPError) as exc:
            raise MigrationFailed(Phase.SETUP, str(exc), True) from exc

    def _limit_time(self) -> None:
        """The caller's timeout, or a smaller one scaled to the RAM and disks to move."""
        settings = self.settings
        summary = self.session.execute("query-memory-size-summary")
        ram = summary.get("base-memory", 0) + summary.get("plugged-memory", 0)
        disk = sum(job.get("len", 0) for job in self._jobs().values())
        rate = settings.timeout_min_rate
        if settings.max_bandwidth:
            rate = min(rate, settings.max_bandwidth / 2)  # a capped link is slow on purpose
        scaled = completion_timeout(ram, disk, absolute_s=float("inf"), base_s=settings.timeout_base_s,
                                    min_rate=rate)
        if settings.timeout <= scaled:
            self.timeout, self.timeout_limit = settings.timeout, "timeout option"
            self._timeout_text = f"the timeout option ({settings.timeout:g}s)"
        else:
            self.timeout, self.timeout_limit = scaled, "size-scaled"
            self._timeout_text = (f"the limit scaled to the VM's size ({scaled:.1f}s: {settings.timeout_base_s:g}s + "
                                  f"{ram / MIB:.0f} MiB RAM and {disk / MIB:.0f} MiB disk at {mib_s(rate)}; "
                                  "on a slower link set max_bandwidth to its rate)")

    def _start_mirrors(self) -> None:
        """Start the mirror of each disk that has none yet (a re-run finds its mirrors running)."""
        targets = [target for target in self.settings.mirrors_to_start
                   if not _mirror.find_job(self.session, mirror_job(target.node))]
        if targets:
            self.phase = Phase.MIRROR_SYNC
        for target in targets:
            if not _mirror.node_exists(self.session, target.node):
                raise MigrationFailed(self.phase, f"the VM has no block node {target.node} to mirror", True)
            try:
                _mirror.start_mirror(self.session, target.node, target.host, target.port, target.export,
                                     target.copy_mode, target.speed, self.settings.tls)
            except QMPError as exc:
                raise MigrationFailed(self.phase, f"cannot start the mirror of {target.node} to {target.host}:"
                                      f"{target.port}: {exc}", True) from exc

    def _wait_mirrors(self, events: Any) -> None:
        """Every disk mirror must exist; wait (sampling as phase mirror-sync) until all are READY, failing after
        the mirror timeout or once they copy nothing for the stall timeout (an NBD target that dropped off the
        network never errors by itself)."""
        nodes = self.settings.mirrored_nodes
        if not nodes:
            return
        self.phase = Phase.MIRROR_SYNC
        settings = self.settings
        limit = self.timeout if settings.mirror_timeout is None else min(self.timeout, settings.mirror_timeout)
        deadline = self._started + limit
        moved: tuple[float, int] | None = None
        while True:
            jobs = self._jobs()
            for node in nodes:
                job = jobs.get(mirror_job(node))
                if job is None or job.get("status") in ("aborting", "concluded", "null"):
                    raise MigrationFailed(Phase.SETUP, f"the disk mirror of {node} is not ready: "
                                          f"{'no mirror job' if job is None else 'its job is ' + job['status']}",
                                          True)
            remaining, total = self._disk_figures(jobs)
            _keep(self.mirror_history, {"t": time.time(), "disk_remaining": remaining, "disk_total": total})
            if all(job.get("ready") for job in jobs.values()):
                self.mirrors_ready = {node: _mirror.progress(jobs[mirror_job(node)]) for node in nodes}
                return
            now = time.monotonic()
            self._record(_progress.sample({}, now - self._started, self.phase.reported, None, (remaining, total)))
            if now > deadline:
                if settings.mirror_timeout is not None and settings.mirror_timeout < self.timeout:
                    raise MigrationFailed(self.phase, f"the disk mirrors were not in sync after "
                                          f"{settings.mirror_timeout:g}s (the mirror timeout): {remaining} of "
                                          f"{total} bytes left", True)
                raise MigrationFailed(self.phase, self._timeout_message(), True)
            copied = sum(job.get("offset", 0) for job in jobs.values())
            if moved is None or copied != moved[1]:
                moved = (now, copied)
            elif now - moved[0] >= settings.stall_timeout:
                raise MigrationFailed(self.phase, f"the disk mirrors copied nothing for {settings.stall_timeout:g}s "
                                      f"(is the target reachable?): {remaining} of {total} bytes left", True)
            event = events.get(min(self.settings.sample_interval, max(deadline - now, 0.01)))
            if event is not None:
                self._handle(event)

    def _configure(self) -> None:
        """Exactly these capabilities (left-overs of an earlier run switched off), then the parameters.

        The source pauses before the switchover: the disk mirrors finish there, and the point of no return is
        recorded before the device state leaves."""
        set_capabilities(self.session, ["events", "pause-before-switchover", *self.settings.capabilities])
        parameters = self._start_parameters()
        self.session.execute("migrate-set-parameters", parameters)
        self.downtime_limit_ms = parameters["downtime-limit"]
        self.bandwidth = parameters["max-bandwidth"]
        offsets = sum(job.get("offset", 0) for job in self._jobs().values())
        self._mirror_mark = (time.monotonic() - self._started, offsets)

    def _start_parameters(self) -> dict[str, Any]:
        """Ours, then the caller's, then the policy's starting point (merged last)."""
        settings = self.settings
        cap = settings.max_bandwidth
        uncapped = QEMU_DEFAULT_BANDWIDTH if settings.convergence == "defaults" else UNLIMITED_BANDWIDTH
        ours = {"max-bandwidth": cap or uncapped, "downtime-limit": settings.downtime_limit_ms,
                "max-postcopy-bandwidth": cap, **THROTTLE_DEFAULTS, **_tlsqemu.outgoing_parameters(settings.tls)}
        return {**ours, **self.parameters, **self.policy.initial_parameters()}

    def _follow(self, events: Any) -> None:
        next_sample = time.monotonic()
        while True:
            deadline = self._started + self.timeout + self._paused_seconds
            now = time.monotonic()
            if now >= next_sample:
                self._observe(now)
                next_sample = now + self.settings.sample_interval
            if now > deadline:
                raise MigrationFailed(self.phase, self._timeout_message(), True)
            event = events.get(min(next_sample, deadline) - time.monotonic())
            if event is None:
                continue
            if self._handle(event):
                return

    def _timeout_message(self) -> str:
        return f"not complete after {time.monotonic() - self._started:.1f}s, the limit set by {self._timeout_text}"

    # -- every sample_interval ---------------------------------------------------------------------

    def _observe(self, now: float) -> None:
        """Sample, record, share the bandwidth, ask the policy; fail on a stall."""
        info = self.session.execute("query-migrate")
        if info.get("status") == "postcopy-paused":
            self._enter_postcopy()
            self._postcopy_paused(info)
            info, now = self.session.execute("query-migrate"), time.monotonic()
        jobs = self._jobs()
        if info.get("status") in POSTCOPY:
            self._enter_postcopy()
        point = _progress.sample(info, now - self._started, self.phase.reported, self.downtime_limit_ms,
                                 self._disk_figures(jobs))
        self._record(point)
        if self.phase is Phase.PRE_COPY and point["status"] == "active":
            self._share_bandwidth(point, jobs)
            for action in self.policy.observe(point):
                self._apply(point["t"], action)
        self._check_stall(now, point)

    def _record(self, point: dict[str, Any]) -> None:
        _keep(self.history, point)
        self._latest = point
        self._write_progress(point)

    def _share_bandwidth(self, point: dict[str, Any], jobs: dict[str, dict[str, Any]]) -> None:
        """A bandwidth cap holds for RAM and disk together: RAM gets what the mirrors leave of it."""
        cap = self.settings.max_bandwidth
        if not cap or not self.settings.mirrored_nodes:
            return
        offset = sum(job.get("offset", 0) for job in jobs.values())
        previous = self._mirror_mark
        if previous is not None and point["t"] - previous[0] < SHARE_WINDOW:
            return
        self._mirror_mark = (point["t"], offset)
        if previous is None:
            return
        rate = max(offset - previous[1], 0) / (point["t"] - previous[0])
        wanted = shared_bandwidth(cap, rate)
        if abs(wanted - self.bandwidth) > self.bandwidth * SHARE_STEP:
            self._apply(point["t"], SetParameters({"max-bandwidth": wanted},
                                                  f"the disk mirrors use {mib_s(rate)} of the {mib_s(cap)} cap"))

    def _apply(self, t: float, action: Action) -> None:
        if isinstance(action, SetParameters):
            self.session.execute("migrate-set-parameters", action.parameters)
            self.downtime_limit_ms = action.parameters.get("downtime-limit", self.downtime_limit_ms)
            self.bandwidth = action.parameters.get("max-bandwidth", self.bandwidth)
            self.actions.append({"t": t, "action": "set-parameters", "parameters": dict(action.parameters),
                                 "reason": action.reason})
        elif isinstance(action, StartPostcopy):
            self.actions.append({"t": t, "action": "start-postcopy", "reason": action.reason})
            self.settings.before_point_of_no_return()
            self.session.execute("migrate-start-postcopy")
            self._postcopy_requested = True
        elif isinstance(action, Abort):
            self.actions.append({"t": t, "action": "abort", "reason": action.message})
            raise MigrationFailed(self.phase, action.message, True)

    def _check_stall(self, now: float, point: dict[str, Any]) -> None:
        """Fail when no RAM moves for stall_timeout seconds: a dead link never errors by itself. In a post-copy that
        can be recovered, pause it after postcopy_stall_seconds instead: the recovery takes it from there.

        Not once every page has been sent: QEMU is then completing, a pause fails the migration instead of pausing
        it (and QEMU 10.0 restarts the source), while TCP delivers the rest by itself once the link is back."""
        transferred = point["transferred"]
        if transferred is None:
            return
        if self._moved is None or transferred != self._moved[0]:
            self._moved = (transferred, point["t"])
        still = now - self._started - max(self._moved[1], self._stall_mark)
        if self.settings.recovery_uri and point["status"] == "postcopy-active":
            if still >= self.settings.postcopy_stall_seconds and point["remaining"] != 0:
                self.actions.append({"t": round(now - self._started, 3), "action": "migrate-pause",
                                     "reason": f"no data moved for {still:.1f}s in post-copy: the link is taken for "
                                               "dead, the stream is broken on purpose to be resumed"})
                self.session.execute("migrate-pause")
                self._stall_mark = now - self._started
            return
        if still >= self.settings.stall_timeout:
            raise MigrationFailed(self.phase, f"no data moved for {self.settings.stall_timeout:g}s "
                                  "(is the migration link down?)", True)

    @property
    def _mirrors_done(self) -> bool:
        """Finished at the switchover: the mirrors are gone once the device state may leave."""
        return self.phase.target_may_run

    def _jobs(self) -> dict[str, dict[str, Any]]:
        """Our mirror jobs by id (none once they are finished)."""
        if not self.settings.mirrored_nodes or self._mirrors_done:
            return {}
        ours = {mirror_job(node) for node in self.settings.mirrored_nodes}
        return {job["device"]: job for job in self.session.execute("query-block-jobs") if job["device"] in ours}

    def _disk_figures(self, jobs: dict[str, dict[str, Any]]) -> tuple[int, int]:
        """(bytes the mirrors still have to copy, bytes they cover)."""
        if self._mirrors_done or not jobs:
            return 0, self._disk_total
        self._disk_total = sum(job.get("len", 0) for job in jobs.values())
        return sum(max(job.get("len", 0) - job.get("offset", 0), 0) for job in jobs.values()), self._disk_total

    # -- events ------------------------------------------------------------------------------------

    def _handle(self, event: dict[str, Any]) -> bool:
        """React to one event; True when the migration has completed."""
        name, data = event["event"], event.get("data", {})
        if name == "STOP":
            self.marks.setdefault("stop", event_time(event))
        elif name == "MIGRATION":
            status = data["status"]
            if status == "pre-switchover":
                self._switchover()
            elif status == "postcopy-active":
                self.marks.setdefault("postcopy", event_time(event))
                self._enter_postcopy()
            elif status == "postcopy-paused":
                self._enter_postcopy()
                info = self.session.execute("query-migrate")
                if info.get("status") == "postcopy-paused":  # not an event from before a recovery
                    self._postcopy_paused(info)
            elif status == "completed":
                self.marks["completed"] = event_time(event)
                return True
            elif status in ("cancelling", "cancelled") and not self.phase.target_may_run:
                self._failure_outcome = "cancelled"  # a migrate_cancel from another monitor
                if status == "cancelled":
                    raise MigrationFailed(self.phase, "the migration was cancelled from outside", True)
            elif status in ("failed", "cancelled"):
                error = self._error_desc() or status
                raise MigrationFailed(self.phase, f"QEMU reports the migration {status}: {error}",
                                      not self.phase.target_may_run)
        elif name in ("BLOCK_JOB_ERROR", *_mirror.JOB_END_EVENTS) \
                and self.phase in (Phase.MIRROR_SYNC, Phase.PRE_COPY) and self._is_our_mirror(data):
            raise MigrationFailed(self.phase, f"disk mirror {data['device']} stopped: {data.get('error') or name}",
                                  True)
        return False

    def _postcopy_paused(self, info: dict[str, Any]) -> None:
        why = info.get("error-desc") or "the migration stream broke"
        if not self.settings.recovery_uri:
            raise MigrationFailed(Phase.POST_COPY, f"QEMU paused the post-copy (postcopy-paused: {why})", False)
        self._recover(why)

    def _recover(self, why: str) -> None:
        """Resume the paused post-copy on the recovery URI, once a second, until QEMU has left postcopy-paused or
        recovery_timeout has passed. The source is never resumed: the target runs the guest."""
        settings = self.settings
        start = time.monotonic()
        paused_at = round(start - self._started, 3)
        self.actions.append({"t": paused_at, "action": "postcopy-paused", "reason": why})
        deadline = start + settings.recovery_timeout
        attempts, tried, problem, next_sample = 0, float("-inf"), None, start
        while True:
            info = self.session.execute("query-migrate")
            status, now = info.get("status"), time.monotonic()
            if status in RECOVERED:
                break
            if status not in POSTCOPY:
                raise MigrationFailed(Phase.POST_COPY, f"QEMU reports the migration {status} while resuming the "
                                      f"post-copy: {info.get('error-desc') or status}", False)
            if now >= next_sample:
                self._record(_progress.sample(info, now - self._started, self.phase.reported, self.downtime_limit_ms))
                next_sample = now + settings.sample_interval
            if now > deadline:
                raise MigrationFailed(Phase.POST_COPY, self._unrecovered(why, attempts, problem), False)
            if status == "postcopy-paused" and now - tried >= RECOVERY_RETRY:
                attempts, tried = attempts + 1, now
                try:
                    self.session.execute("migrate", {"uri": settings.recovery_uri, "resume": True})
                except QMPError as exc:
                    problem = str(exc)
            time.sleep(0.05)
        resumed = time.monotonic()
        self._paused_seconds += resumed - start
        self._stall_mark = resumed - self._started
        self.recoveries.append({"paused_at": paused_at, "resumed_at": round(resumed - self._started, 3),
                                "attempts": attempts})
        self.actions.append({"t": round(resumed - self._started, 3), "action": "postcopy-resumed",
                             "reason": f"QEMU reports {status} after {attempts} resume attempts on "
                                       f"{settings.recovery_uri}"})

    def _unrecovered(self, why: str, attempts: int, problem: str | None) -> str:
        uri = self.settings.recovery_uri
        last = f"; the last refusal: {problem}" if problem else ""
        return (f"the post-copy paused ({why}) and could not be resumed within {self.settings.recovery_timeout:g}s "
                f"({attempts} attempts of migrate with resume=true to {uri}{last}). The VM is paused on the target "
                f"in postcopy-paused with part of its memory still here: both QEMUs are kept and the source is not "
                f"resumed. To retry once the link works: on the target, if its query-migrate lists no socket on "
                f"{uri}, run livemig.qemu.qemu_qmp command=migrate-recover arguments={{\"uri\": \"{uri}\"}}; then "
                f"here, livemig.qemu.qemu_qmp command=migrate arguments={{\"uri\": \"{uri}\", \"resume\": true}}")

    def _error_desc(self) -> str | None:
        try:
            return self.session.execute("query-migrate").get("error-desc")
        except QMPError:
            return None

    def _is_our_mirror(self, data: dict[str, Any]) -> bool:
        return data.get("device") in {mirror_job(node) for node in self.settings.mirrored_nodes}

    def _enter_postcopy(self) -> None:
        self.phase = Phase.POST_COPY

    def _switchover(self) -> None:
        """The source is paused (before the device state, or before post-copy): finish the mirrors, then go on."""
        self.phase = Phase.SWITCHOVER
        self.marks["pre_switchover"] = time.time()
        deadline = time.monotonic() + self.settings.switchover_timeout
        nodes = self.settings.mirrored_nodes
        self.marks["mirror_processed_bytes"] = sum(_mirror.finish_gracefully(self.session, nodes, deadline).values()) \
            if nodes else 0
        self.marks["mirrors_done"] = time.time()
        self.phase = Phase.DEVICE_STATE
        self.settings.before_point_of_no_return()
        self.session.execute("migrate-continue", {"state": "pre-switchover"})

    # -- failure -----------------------------------------------------------------------------------

    def _rollback(self, failure: Exception) -> MigrationFailed:
        """Undo a migration that failed before the target could run; never resume once it might have."""
        phase = getattr(failure, "stage", self.phase)
        cause = getattr(failure, "cause", str(failure))
        status = migration_status(self.session)
        if self.phase is Phase.POST_COPY or status in POSTCOPY or (self._postcopy_requested and status == "device"):
            # The target runs the guest and pulls the rest of its memory from here: nothing may be undone.
            self.phase = Phase.POST_COPY
            if status not in POSTCOPY:
                return self._held(cause, "; the post-copy cannot be resumed (QEMU ended it here)")
            state = run_state(self.session)  # finish-migrate for as long as the post-copy is paused
            return MigrationFailed(Phase.POST_COPY, f"{cause}; QEMU reports the migration {status} and the source "
                                   f"VM {state}; {POSTCOPY_RECOVERY}", state == "running", self._statistics_safely())
        if self.phase.target_may_run:
            # The device state may have reached the target: never resume here; the target's real state decides.
            return self._held(cause)
        notes = undo((("cancel migration", lambda: cancel(self.session)),
                      ("abort mirrors", lambda: abort_mirrors(self.session, self.settings.mirrored_nodes)),
                      ("resume source", lambda: self._was_running and resume_if_paused(self.session))))
        return MigrationFailed(phase, with_notes(cause, notes), run_state(self.session) == "running",
                               self._statistics_safely())

    def _held(self, cause: str, after: str = "") -> MigrationFailed:
        """The failure once the source is held: the cause, what became of the source, then `after`."""
        held = self._hold_source()
        return MigrationFailed(self.phase, f"{cause}; {held}{after}", run_state(self.session) == "running",
                               self._statistics_safely())

    def _hold_source(self) -> str:
        """QEMU restarts a source whose migration failed after the device state left; the target may run the VM
        by then. Pause it again at once: two running copies would diverge, and only the target's state can say
        which copy is the VM."""
        settled = settled_state(self.session)
        if settled != "running":
            return f"the source VM is {settled or 'gone'} and stays so"
        try:
            self.session.execute("stop")
        except QMPError as exc:
            return f"QEMU restarted the source VM by itself and it could not be paused again: {exc}"
        self.actions.append({"t": round(time.monotonic() - self._started, 3), "action": "stop-source",
                             "reason": "QEMU restarted the source after the device state may have reached the target"})
        return "QEMU restarted the source VM by itself; it was paused again at once and is not resumed here"

    # -- reporting ---------------------------------------------------------------------------------

    def _write_progress(self, point: dict[str, Any], outcome: str | None = None, message: str | None = None) -> None:
        if self.settings.progress_path:
            _progress.write(self.settings.progress_path, point, self.actions, self._epoch, outcome, message)

    def _finish(self, outcome: str, message: str) -> None:
        latest = self._latest or _progress.sample({}, time.monotonic() - self._started, self.phase.reported,
                                                  self.downtime_limit_ms)
        self._write_progress(latest, outcome, message)

    def _statistics_safely(self) -> dict[str, Any]:
        try:
            return self._statistics()
        except QMPError:
            return {"history": self.history, "policy_actions": self.actions, "recoveries": self.recoveries}

    def _statistics(self) -> dict[str, Any]:
        info = self.session.execute("query-migrate")
        ram = info.get("ram", {})
        postcopy_ms = None
        if "postcopy" in self.marks and "completed" in self.marks:
            postcopy_ms = round((self.marks["completed"] - self.marks["postcopy"]) * 1000, 1)
        return {
            "status": info.get("status"),
            "total_time_ms": info.get("total-time"),
            "downtime_ms": info.get("downtime"),
            "setup_time_ms": info.get("setup-time"),
            "ram_transferred": ram.get("transferred"),
            "ram_total": ram.get("total"),
            "ram_duplicate_pages": ram.get("duplicate"),
            "ram_normal_pages": ram.get("normal"),
            "ram_postcopy_bytes": ram.get("postcopy-bytes"),
            "postcopy_requests": ram.get("postcopy-requests"),
            "passes": ram.get("dirty-sync-count"),
            "mirror_processed_bytes": self.marks.get("mirror_processed_bytes"),
            "source_stop_time": self.marks.get("stop"),
            "pre_switchover_time": self.marks.get("pre_switchover"),
            "mirrors_done_time": self.marks.get("mirrors_done"),
            "completed_time": self.marks.get("completed"),
            "wall_time_s": round(time.monotonic() - self._started, 3),
            "policy": self.settings.convergence,
            "policy_actions": self.actions,
            "postcopy_started": self.phase is Phase.POST_COPY,
            "postcopy_time_ms": postcopy_ms,
            "recoveries": self.recoveries,
            "effective_timeout_s": round(self.timeout, 1),
            "timeout_limit": self.timeout_limit,
            "downtime_limit_ms": self.downtime_limit_ms,
            "max_bandwidth": self.bandwidth,
            "history": self.history,
            "query_migrate": info,
        }
