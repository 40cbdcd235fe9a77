# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The convergence policy of pre-copy: what to do when a migration does not converge.

Private to the livemig.qemu collection. Pure logic, no I/O: the source state
machine feeds it every progress sample (ten a second; the dicts `_progress.sample()`
makes from query-migrate) and applies the actions it returns. It judges by the samples'
times and the passes, never by how many samples came, so the sample rate does not
change its time scales. On a stall it
escalates in a fixed order, each step only as far as the user allowed:
raise the downtime limit towards the target, let auto-converge throttle the
guest harder, switch to post-copy, and finally abort with the measured rates.

With post-copy allowed the guest is never throttled harder: as soon as the first
passes after the bulk show that pre-copy cannot converge, the policy raises the
downtime limit once, to the target, if the last pass would then fit in it, and
otherwise switches to post-copy at once.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Union

MIB = 1 << 20
START_DOWNTIME_MS = 100  # Proxmox's default migrate_downtime and Nova's minimum; TCG's cold cache costs ~100 ms anyway
MIN_EXPECTED_RATE = 16 * MIB  # bytes/s: a migration slower than an eighth of QEMU's default cap is stuck
THROTTLE_INCREMENT_CAP = 40  # percent; larger steps overshoot from QEMU's 20 % start to its 99 % ceiling at once
POLICIES = ("defaults", "auto", "postcopy-early")


@dataclass(frozen=True)
class SetParameters:
    """Apply with `migrate-set-parameters` (these may change while migrating)."""
    parameters: dict[str, Any]
    reason: str = ""


@dataclass(frozen=True)
class StartPostcopy:
    """Apply with `migrate-start-postcopy`."""
    reason: str = ""


@dataclass(frozen=True)
class Abort:
    """Cancel the migration and fail with `message`; the source keeps running."""
    message: str


Action = Union[SetParameters, StartPostcopy, Abort]


@dataclass
class ConvergenceSettings:
    max_downtime_ms: int = 300  # the user's target: the downtime limit never goes above it
    start_downtime_ms: int = START_DOWNTIME_MS
    downtime_factor: float = 2.0  # each step multiplies the limit (Proxmox doubles it)
    auto_converge: bool = False  # the capability was on when the migration started
    cpu_throttle_initial: int = 20  # QEMU's defaults for the three throttle parameters
    cpu_throttle_increment: int = 10
    max_cpu_throttle: int = 99  # the user's ceiling
    ceiling_grace_seconds: float = 30.0  # how long the throttle may work at the ceiling before it counts as spent
    postcopy: bool = False  # postcopy-ram was on at the start, on both sides
    postcopy_after_passes: int = 0  # > 0: start post-copy once this many passes are done
    escalate: bool = True  # False: never act (the QEMU defaults policy)
    stall_passes: int = 3  # passes without progress ...
    stall_seconds: float = 5.0  # ... lasting at least this long
    progress: float = 0.10  # a pass is progress when it is this much smaller than the best one so far
    rate_window: float = 5.0  # seconds of samples for the dirty rate / link rate comparison
    settle_seconds: float = 3.0  # after an action, wait this long and for one more pass before the next
    early_passes: int = 2  # with post-copy allowed, the passes after the bulk judged at once, each on its own


def completion_timeout(ram_bytes: int, disk_bytes: int = 0, absolute_s: float = 3600.0, base_s: float = 60.0,
                       min_rate: float = MIN_EXPECTED_RATE) -> float:
    """Seconds a migration of this much RAM and disk may take: base + size / min_rate, at most absolute_s."""
    return min(absolute_s, base_s + (ram_bytes + disk_bytes) / min_rate)


def mib_s(rate: float) -> str:
    return f"{rate / MIB:.1f} MiB/s"


class ConvergencePolicy:
    """Call `observe(sample)` once per progress sample; apply the actions it returns, in order."""

    def __init__(self, settings: ConvergenceSettings):
        self.settings = settings
        self.downtime_ms = min(settings.start_downtime_ms, settings.max_downtime_ms)
        self.throttle_increment = settings.cpu_throttle_increment
        self.throttle_allowed = settings.max_cpu_throttle <= settings.cpu_throttle_initial
        self.throttle_exhausted = not settings.auto_converge
        self._ceiling_since: float | None = None
        self.done = False  # post-copy started or abort given: nothing more to decide
        self.actions: list[tuple[float, Action]] = []
        self._pass: int | None = None  # the pass in progress and the largest remaining seen in it
        self._peak = 0
        self._best: int | None = None  # the smallest pass so far, the pass it was and when it ended
        self._best_pass = 0
        self._best_t = 0.0
        self._peaks: list[int] = []  # the largest remaining of each pass after the bulk that has ended
        self._window: deque[dict[str, Any]] = deque()
        self._settle_until = (0.0, 0)
        self._throttle_mark = -1
        self._just_judged = 0

    def initial_parameters(self) -> dict[str, Any]:
        """migrate-set-parameters for the start, applied after the user's own parameters."""
        if not self.settings.escalate:
            return {}
        parameters: dict[str, Any] = {"downtime-limit": self.downtime_ms}
        if self.settings.auto_converge and not self.throttle_allowed:
            # hold QEMU at its first throttle step until the downtime steps are spent
            parameters["max-cpu-throttle"] = self.settings.cpu_throttle_initial
        return parameters

    def observe(self, sample: dict[str, Any]) -> list[Action]:
        if not self.settings.escalate or self.done or sample.get("status") != "active":
            return []
        passes = sample.get("passes") or 0
        if passes < 2 or sample.get("remaining") is None:
            return []  # the bulk stage: remaining shrinks as RAM is sent the first time, no verdict yet
        self._record(sample, passes)
        if self.settings.postcopy and 0 < self.settings.postcopy_after_passes < passes:
            return self._act(sample, [StartPostcopy(f"{passes - 1} passes done")])
        if sample["t"] < self._settle_until[0] or passes < self._settle_until[1]:
            return []
        why = self.early_reason() or self.stall_reason(sample)
        return self._act(sample, self._escalate(sample, why)) if why else []

    def _record(self, sample: dict[str, Any], passes: int) -> None:
        if passes != self._pass:  # the pass before has ended: is it the smallest by a clear margin?
            if self._pass is not None:
                self._peaks.append(self._peak)
                if self._progressed():
                    self._best, self._best_pass, self._best_t = self._peak, self._pass, sample["t"]
            self._pass, self._peak = passes, sample["remaining"]
        self._peak = max(self._peak, sample["remaining"])
        self._window.append(sample)
        while len(self._window) > 2 and self._window[1]["t"] <= sample["t"] - self.settings.rate_window:
            self._window.popleft()  # keep one sample at or before the start of the window

    def _progressed(self) -> bool:
        return self._best is None or self._peak < self._best * (1 - self.settings.progress)

    def rates(self) -> tuple[float, float]:
        """(dirty rate, link rate) in bytes/s over the sample window; the link rate from the bytes sent."""
        first, last = self._window[0], self._window[-1]
        dirty = sum(point.get("dirty_rate") or 0 for point in self._window) / len(self._window)
        if last["t"] > first["t"] and first.get("transferred") is not None and last.get("transferred") is not None:
            return dirty, (last["transferred"] - first["transferred"]) / (last["t"] - first["t"])
        return dirty, (last.get("mbps") or 0) * 1e6 / 8  # QEMU's mbps is megabits per second

    def early_reason(self) -> str | None:
        """With post-copy allowed, why the first passes after the bulk already show that pre-copy cannot converge:
        the guest dirties as fast as the link carries, or a pass is not clearly smaller than the one before."""
        settings, peaks = self.settings, self._peaks
        if not settings.postcopy or not 0 < len(peaks) <= settings.early_passes or self._just_judged == len(peaks):
            return None
        self._just_judged = len(peaks)  # each early pass is judged once, on the first sample after it
        dirty, link = self.rates()
        if link > 0 and dirty >= link:
            return f"after pass {len(peaks) + 1} the dirty rate {mib_s(dirty)} >= link rate {mib_s(link)}"
        if len(peaks) > 1 and peaks[-1] >= peaks[-2] * (1 - settings.progress):
            return (f"pass {len(peaks) + 1} ({peaks[-1] / MIB:.1f} MiB) is not clearly smaller than pass "
                    f"{len(peaks)} ({peaks[-2] / MIB:.1f} MiB)")
        return None

    def stall_reason(self, sample: dict[str, Any]) -> str | None:
        """Why pre-copy is not converging, or None while it is."""
        settings = self.settings
        if self._best is not None:
            passes_since = sample["passes"] - 1 - self._best_pass
            if passes_since >= settings.stall_passes and sample["t"] - self._best_t >= settings.stall_seconds:
                return f"no pass below {self._best / MIB:.1f} MiB in the last {passes_since} passes"
        if sample["t"] - self._window[0]["t"] >= settings.rate_window:
            dirty, link = self.rates()
            if link > 0 and dirty >= link:
                return f"dirty rate {mib_s(dirty)} >= link rate {mib_s(link)} over {settings.rate_window:g}s"
        return None

    def _escalate(self, sample: dict[str, Any], why: str) -> list[Action]:
        settings = self.settings
        if settings.postcopy:
            return self._towards_postcopy(why)
        if self.downtime_ms < settings.max_downtime_ms:
            self.downtime_ms = min(settings.max_downtime_ms, int(self.downtime_ms * settings.downtime_factor))
            return [SetParameters({"downtime-limit": self.downtime_ms}, why)]
        if not self.throttle_exhausted:
            actions = self._throttle_harder(sample, why)
            if actions is not None:
                return actions
        dirty, link = self.rates()
        throttle = f", cpu throttle {sample.get('throttle') or 0}%" if settings.auto_converge else ""
        return [Abort(f"pre-copy cannot converge: the guest dirties {mib_s(dirty)}, the link carries {mib_s(link)} "
                      f"({why}; downtime limit {self.downtime_ms} ms{throttle}); "
                      "allow post-copy or raise livemig_max_downtime_ms")]

    def _towards_postcopy(self, why: str) -> list[Action]:
        """Post-copy, unless the downtime target would let pre-copy converge now: what the last pass left to send,
        at the link rate, fits in it. Then the limit goes to the target at once, and post-copy follows if even that
        does not help."""
        target = self.settings.max_downtime_ms
        unused_dirty, link = self.rates()
        last_pass = self._peaks[-1] if self._peaks else self._peak
        if self.downtime_ms < target and link > 0 and last_pass / link * 1000 <= target:
            self.downtime_ms = target
            return [SetParameters({"downtime-limit": target}, f"{why}; the last pass ({last_pass / MIB:.1f} MiB at "
                                                              f"{mib_s(link)}) fits in {target} ms")]
        return [StartPostcopy(why)]

    def _throttle_harder(self, sample: dict[str, Any], why: str) -> list[Action] | None:
        """The next auto-converge step ([] to wait for QEMU), or None once throttling is exhausted."""
        ceiling, throttle = self.settings.max_cpu_throttle, sample.get("throttle") or 0
        if throttle >= ceiling:
            # The last steps matter most (under TCG even 80 % leaves a guest enough CPU to dirty 128 MiB/s):
            # give the full throttle a while before calling it exhausted.
            self._ceiling_since = self._ceiling_since if self._ceiling_since is not None else sample["t"]
            if sample["t"] - self._ceiling_since < self.settings.ceiling_grace_seconds:
                return []
        if not self.throttle_allowed:
            self.throttle_allowed, self._throttle_mark = True, throttle
            return [SetParameters({"max-cpu-throttle": ceiling}, why)]
        if self._throttle_mark < throttle:
            # QEMU is still throttling harder by itself, or has just reached the ceiling: give that time to show
            self._throttle_mark = throttle
            return []
        if throttle < ceiling and self.throttle_increment < THROTTLE_INCREMENT_CAP:
            self.throttle_increment = min(THROTTLE_INCREMENT_CAP, self.throttle_increment * 2)
            self._throttle_mark = throttle
            return [SetParameters({"cpu-throttle-increment": self.throttle_increment}, why)]
        self.throttle_exhausted = True
        return None

    def _act(self, sample: dict[str, Any], actions: list[Action]) -> list[Action]:
        """Note the actions; after any, let QEMU show their effect before judging again."""
        self._settle_until = (sample["t"] + self.settings.settle_seconds, sample["passes"] + 1)
        for action in actions:
            self.actions.append((sample["t"], action))
            self.done = self.done or isinstance(action, (StartPostcopy, Abort))
        return actions


def make_policy(name: str, **settings: Any) -> ConvergencePolicy:
    """A named policy: `defaults` (never acts), `auto` (escalates), `postcopy-early` (post-copy after pass 1)."""
    if name == "defaults":
        return ConvergencePolicy(ConvergenceSettings(**settings, escalate=False))
    if name == "auto":
        return ConvergencePolicy(ConvergenceSettings(**settings))
    if name == "postcopy-early":
        if not settings.get("postcopy"):
            raise ValueError("the postcopy-early policy needs postcopy-ram enabled on both sides")
        return ConvergencePolicy(ConvergenceSettings(**settings, postcopy_after_passes=1))
    raise ValueError(f"unknown convergence policy {name!r}; known: {', '.join(POLICIES)}")
