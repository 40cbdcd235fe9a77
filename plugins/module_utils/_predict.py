# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Predict a move from measured figures, before anything moves: how long each strategy takes and how long the guest
stands still, and which strategy `auto` should pick.

Private to the livemig.qemu collection. Pure functions, no I/O. Rates are bytes/s, times seconds, freezes ms; the
answers are plain JSON types (the plan is an Ansible fact).

The model, kept simple enough to explain in a sentence each. R is the migration rate: the lowest of the measured link
rate, the rate QEMU's own stream last reached from this host to this target when the host held it back
(`_streamcache`; under TCG or with TLS QEMU sends far slower than the link test) and the cap (livemig_max_bandwidth).

- Disk mirror first: the allocated bytes D of the local disks while the guest writes w bytes/s to them:
  D / (R - w) seconds; it never catches up when w >= R.
- Pre-copy: pass 1 sends the non-zero RAM (QEMU sends zero pages as a flag). Each later pass sends what the guest
  dirtied during the one before: min(working set, dirty rate x that pass' time, RAM). The guest stops as soon as
  what is left takes no longer to send than the downtime target minus the switchover overhead; that remainder is
  sent while it is frozen: freeze = remainder / R + overhead. At most 30 passes while it runs; once the passes stop
  shrinking (the guest dirties at least R and the working set does not bound it below the limit) it never
  converges.
- Pre-copy with auto-converge: the same, with the dirty rate times (1 - throttle). Like QEMU, the throttle starts at
  20 % after the first pass that does not converge and adds 10 % after each further one, up to max_cpu_throttle.
  A guest throttled by 50 % or more is starved: the move is hardly live for it.
- Post-copy: pass 1 as pre-copy, then the switch: the guest is frozen for the overhead plus the device state, then
  runs on the target while the rest (what was dirty at the switch) comes over at R. It always completes unless the
  link fails; the guest runs slower during that post-copy phase.
- Stateful: the guest is paused throughout: save the non-zero RAM to a file, copy it and the disks at R, restore.

The totals include the disk mirror and the freeze. The bound is (non-zero RAM + disk) / R: no move beats it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from ansible_collections.livemig.qemu.plugins.module_utils._convergence import MIB, mib_s

GIB = 1 << 30
STRATEGIES = ("precopy", "precopy-throttled", "postcopy", "stateful")
LABELS = {"precopy": "pre-copy", "precopy-throttled": "pre-copy with auto-converge", "postcopy": "post-copy",
          "stateful": "stateful"}
MAX_PASSES = 30
THROTTLE_INITIAL = 20  # QEMU's cpu-throttle-initial and cpu-throttle-increment defaults
THROTTLE_INCREMENT = 10
STARVED_PERCENT = 50
STREAM = "QEMU's stream, as last measured from this host to this target"
OPTIONAL_FIGURES = ("link_rate", "ram_nonzero_bytes", "working_set_bytes", "stream_rate")


@dataclass(frozen=True, kw_only=True)
class Measurements:
    """What was measured on the source before the move. None for ram_nonzero_bytes means unknown (all of the RAM);
    None for working_set_bytes means unknown (no bound); None or 0 for link_rate means not measured, for stream_rate
    no ceiling known."""
    ram_bytes: int
    link_rate: float | None
    ram_nonzero_bytes: int | None = None
    disk_bytes: int = 0
    dirty_rate: float = 0.0
    working_set_bytes: int | None = None
    cap: float = 0.0
    disk_write_rate: float = 0.0
    stream_rate: float | None = None

    def __post_init__(self) -> None:
        for name in ("ram_bytes", "link_rate", "ram_nonzero_bytes", "disk_bytes", "dirty_rate", "working_set_bytes",
                     "cap", "disk_write_rate", "stream_rate"):
            value = getattr(self, name)
            if value is None and name in OPTIONAL_FIGURES:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    @property
    def nonzero(self) -> float:
        return self.ram_bytes if self.ram_nonzero_bytes is None else min(self.ram_nonzero_bytes, self.ram_bytes)

    def _rates(self) -> dict[str, float]:
        """The rates that bound the move, by name, the link's first (it wins a tie); the cap counts only beside a
        measured one."""
        rates = {name: float(rate) for name, rate in (("link", self.link_rate), ("stream", self.stream_rate)) if rate}
        if rates and self.cap:
            rates["cap"] = float(self.cap)
        return rates

    @property
    def limited_by(self) -> str | None:
        """What sets the migration rate: "link", "stream" (QEMU's own ceiling) or "cap"; None when neither the link
        nor the stream was measured."""
        rates = self._rates()
        return min(rates, key=rates.__getitem__) if rates else None

    @property
    def rate(self) -> float:
        """The migration rate: the lowest of the link's, QEMU's stream ceiling and the cap; 0 when not measured."""
        return min(self._rates().values(), default=0.0)

    def rate_words(self) -> str:
        if self.limited_by == "cap":
            return f"the {mib_s(self.cap)} cap (livemig_max_bandwidth)"
        if self.limited_by == "stream":
            return f"{STREAM}, {mib_s(self.rate)}"
        return f"the link's {mib_s(self.rate)}"


@dataclass(frozen=True)
class PredictSettings:
    max_downtime_ms: int = 300  # the user's target (livemig_max_downtime_ms)
    max_cpu_throttle: int = 99
    switchover_overhead_ms: float = 100.0  # device state and resume; under TCG the target's cold translation cache
    device_state_bytes: int = MIB  # what a post-copy switch sends while the guest is frozen
    state_save_rate: float = GIB  # stateful: writing and reading the local state file
    state_restore_rate: float = GIB


@dataclass
class _Run:
    """A pre-copy simulation: what each pass sent while the guest ran, what was dirty after it, whether the last
    remainder fits the limit, and the throttle reached."""
    sent: list[float] = field(default_factory=list)
    left: list[float] = field(default_factory=list)
    converged: bool = False
    throttle: int = 0


def _dirtied(measured: Measurements, seconds: float, throttle: int) -> float:
    dirtied = min(measured.dirty_rate * (1 - throttle / 100) * seconds, measured.ram_bytes)
    return dirtied if measured.working_set_bytes is None else min(dirtied, measured.working_set_bytes)


def _precopy(measured: Measurements, limit_s: float, max_throttle: int | None = None) -> _Run:
    """Pass by pass until what is left fits in limit_s, the passes stop shrinking, or MAX_PASSES.

    max_throttle None: no auto-converge."""
    rate, run, size = measured.rate, _Run(), measured.nonzero
    while len(run.sent) < MAX_PASSES:
        run.sent.append(size)
        run.left.append(_dirtied(measured, size / rate, run.throttle))
        if run.left[-1] <= limit_s * rate:
            run.converged = True
            break
        if max_throttle is not None and run.throttle < max_throttle:
            run.throttle = min(max_throttle, run.throttle + THROTTLE_INCREMENT if run.throttle else THROTTLE_INITIAL)
        elif run.left[-1] >= size:
            break  # the next pass is no smaller, nor any after it
        size = run.left[-1]
    return run


def _entry(converges: bool, reason: str, total_s: float | None = None, migration_s: float | None = None,
           freeze_s: float | None = None, passes: int = 0, throttle: int = 0, postcopy_s: float = 0.0
           ) -> dict[str, Any]:
    return {"converges": converges, "total_s": _round(total_s), "migration_s": _round(migration_s),
            "freeze_ms": None if freeze_s is None else round(freeze_s * 1000), "passes": passes,
            "guest_starved": throttle >= STARVED_PERCENT, "throttle_percent": throttle,
            "postcopy_s": round(postcopy_s, 3), "reason": reason}


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _mib(size: float) -> str:
    return f"{size / MIB:.1f} MiB"


def _passes(count: int) -> str:
    return f"{count} pass{'' if count == 1 else 'es'}"


def mirror_seconds(measured: Measurements) -> float | None:
    """How long the disk mirror takes to catch up, None when it never does."""
    if not measured.disk_bytes:
        return 0.0
    if measured.disk_write_rate >= measured.rate:
        return None
    return measured.disk_bytes / (measured.rate - measured.disk_write_rate)


def _downtime_needed_ms(measured: Measurements, settings: PredictSettings) -> int | None:
    """The smallest downtime target at which plain pre-copy converges, None when none does: the guest dirties at
    least the rate and no pass gets smaller than the non-zero RAM (stopping it and copying everything)."""
    smallest = min(_precopy(measured, -1.0).left)
    if measured.dirty_rate >= measured.rate and smallest >= measured.nonzero:
        return None
    return math.ceil(settings.switchover_overhead_ms + smallest / measured.rate * 1000)


def _not_converging(measured: Measurements, run: _Run, limit_s: float, target_ms: int) -> str:
    if limit_s < 0:
        return f"the switchover alone takes longer than the {target_ms} ms downtime target"
    dirty = measured.dirty_rate * (1 - run.throttle / 100)
    throttled = f" throttled to {run.throttle} %" if run.throttle else ""
    if dirty >= measured.rate:
        return f"the guest{throttled} dirties {mib_s(dirty)}, more than {measured.rate_words()}"
    return f"after {_passes(len(run.sent))} {_mib(run.left[-1])} are still dirty, more than " \
           f"{measured.rate_words()} sends in the {limit_s * 1000:.0f} ms the {target_ms} ms target leaves"


def _precopy_entry(measured: Measurements, settings: PredictSettings, mirror_s: float,
                   max_throttle: int | None = None) -> dict[str, Any]:
    overhead_s = settings.switchover_overhead_ms / 1000
    limit_s = settings.max_downtime_ms / 1000 - overhead_s
    run = _precopy(measured, limit_s, max_throttle)
    if limit_s < 0 or not run.converged:
        return _entry(False, _not_converging(measured, run, limit_s, settings.max_downtime_ms),
                      passes=len(run.sent), throttle=run.throttle)
    last_s = run.left[-1] / measured.rate
    migration_s = sum(run.sent) / measured.rate + last_s
    throttled = f" (the guest throttled to {run.throttle} %)" if run.throttle else ""
    reason = f"after {_passes(len(run.sent))}{throttled}, {_mib(run.left[-1])} are left to send while the " \
             f"guest is frozen ({last_s * 1000:.0f} ms)"
    return _entry(True, reason, mirror_s + migration_s + overhead_s, migration_s, last_s + overhead_s, len(run.sent),
                  run.throttle)


def _postcopy_entry(measured: Measurements, settings: PredictSettings, mirror_s: float) -> dict[str, Any]:
    first_s = measured.nonzero / measured.rate
    rest = _dirtied(measured, first_s, 0)
    switch_s = settings.device_state_bytes / measured.rate
    postcopy_s = rest / measured.rate
    freeze_s = settings.switchover_overhead_ms / 1000 + switch_s
    reason = f"switches after the first pass; the guest then runs on the target while {_mib(rest)} come over"
    return _entry(True, reason, mirror_s + first_s + postcopy_s + freeze_s, first_s + switch_s + postcopy_s, freeze_s,
                  1, postcopy_s=postcopy_s)


def _stateful_entry(measured: Measurements, settings: PredictSettings) -> dict[str, Any]:
    ram = measured.nonzero
    save_s, restore_s = ram / settings.state_save_rate, ram / settings.state_restore_rate
    total_s = save_s + (ram + measured.disk_bytes) / measured.rate + restore_s
    reason = f"the guest stays paused while {_mib(ram)} of state are saved, copied with {_mib(measured.disk_bytes)} " \
             "of disk and restored"
    return _entry(True, reason, total_s, save_s + restore_s, total_s, 1)


def predict(measured: Measurements, settings: PredictSettings | None = None) -> dict[str, Any]:
    """Every strategy's prediction, by name (STRATEGIES), plus the figures they share."""
    settings = settings or PredictSettings()
    shared = {"predicted": False, "rate": measured.rate or None, "limited_by": measured.limited_by, "mirror_s": None,
              "bound_s": None, "downtime_needed_ms": None, "max_downtime_ms": settings.max_downtime_ms}
    if not measured.rate:
        reason = "no link rate was measured between the migration addresses, so there is no prediction"
        return {**shared, **{name: _entry(False, reason) for name in STRATEGIES}}
    shared.update(predicted=True, bound_s=_round((measured.nonzero + measured.disk_bytes) / measured.rate))
    stateful = _stateful_entry(measured, settings)
    mirror_s = mirror_seconds(measured)
    if mirror_s is None:
        reason = f"the guest writes {mib_s(measured.disk_write_rate)} to its local disks, as much as " \
                 f"{measured.rate_words()} or more: the disk mirror never catches up"
        return {**shared, **{name: _entry(False, reason) for name in STRATEGIES[:-1]}, "stateful": stateful}
    shared.update(mirror_s=_round(mirror_s), downtime_needed_ms=_downtime_needed_ms(measured, settings))
    return {**shared, "precopy": _precopy_entry(measured, settings, mirror_s),
            "precopy-throttled": _precopy_entry(measured, settings, mirror_s, settings.max_cpu_throttle),
            "postcopy": _postcopy_entry(measured, settings, mirror_s), "stateful": stateful}


def _fits(entry: dict[str, Any], max_downtime_ms: int) -> bool:
    return entry["converges"] and entry["freeze_ms"] is not None and entry["freeze_ms"] <= max_downtime_ms


def choose(prediction: dict[str, Any], allowed: Iterable[str], max_downtime_ms: int) -> dict[str, Any]:
    """{strategy, reason}: what `auto` should use for a live move. `allowed` names the strategies the user allows
    besides plain pre-copy ("postcopy", "precopy-throttled"). Strategy None: no live strategy fits, and the reason
    says what would. Stateful is never picked here: it is another method, offered in the refusal."""
    allowed = set(allowed)
    precopy, throttled, postcopy = (prediction[name] for name in STRATEGIES[:-1])
    if not prediction["predicted"]:
        return {"strategy": "precopy", "reason": f"{precopy['reason']}: pre-copy, the runtime convergence policy "
                                                 "escalates if it stalls"}
    if _fits(precopy, max_downtime_ms):
        return {"strategy": "precopy", "reason": f"pre-copy converges: {precopy['reason']}; freeze "
                                                 f"~{precopy['freeze_ms']} ms within the {max_downtime_ms} ms target"}
    problem = precopy["reason"] if not precopy["converges"] else f"its freeze is ~{precopy['freeze_ms']} ms"
    why_not = f"pre-copy does not converge within the {max_downtime_ms} ms downtime target: {problem}"
    if "postcopy" in allowed and postcopy["converges"]:
        return {"strategy": "postcopy",
                "reason": f"{why_not}; post-copy after the first pass: ~{postcopy['total_s']:.1f} s, freeze "
                          f"~{postcopy['freeze_ms']} ms, then {postcopy['postcopy_s']:.1f} s of post-copy"}
    throttle_fits = _fits(throttled, max_downtime_ms) and not throttled["guest_starved"]
    if "precopy-throttled" in allowed and throttle_fits:
        return {"strategy": "precopy-throttled",
                "reason": f"{why_not}; with auto-converge it does: {throttled['reason']}"}
    return {"strategy": None, "reason": refusal(prediction, allowed, max_downtime_ms, why_not)}


def refusal(prediction: dict[str, Any], allowed: set[str], max_downtime_ms: int, why_not: str) -> str:
    """Why no live strategy fits, and every option that would move the VM."""
    throttled, postcopy, stateful = (prediction[name] for name in STRATEGIES[1:])
    text = f"no live strategy fits: {why_not}"
    if _fits(throttled, max_downtime_ms) and throttled["guest_starved"]:
        text += f"; auto-converge would need to throttle the guest to {throttled['throttle_percent']} % (starved)"
    options = []
    if "postcopy" not in allowed and postcopy["converges"]:
        options.append(f"allow post-copy (livemig_allow_postcopy: true, about {postcopy['total_s']:.1f} s)")
    if "precopy-throttled" not in allowed and _fits(throttled, max_downtime_ms) and not throttled["guest_starved"]:
        options.append(f"allow auto-converge (livemig_convergence: auto, throttle {throttled['throttle_percent']} %)")
    options.append(f"stateful (livemig_method: stateful, about {stateful['total_s']:.1f} s frozen)")
    needed = prediction["downtime_needed_ms"]
    if needed is not None and needed > max_downtime_ms:
        options.append(f"raise the downtime target (livemig_max_downtime_ms >= {needed} would converge)")
    elif needed is None and prediction["mirror_s"] is not None:
        text += "; pre-copy cannot converge at any downtime target: the guest dirties more than the link carries"
    return f"{text}. Options: {'; '.join(options)}"


def summary_lines(prediction: dict[str, Any]) -> list[str]:
    """The prediction as short lines for the printed plan."""
    if not prediction["predicted"]:
        return [f"prediction: none ({prediction['precopy']['reason']})"]
    mirror = "never catches up" if prediction["mirror_s"] is None else f"{prediction['mirror_s']:.1f} s"
    source = f" ({STREAM})" if prediction.get("limited_by") == "stream" else ""
    lines = [f"prediction at {mib_s(prediction['rate'])}{source}: bound {prediction['bound_s']:.1f} s, disk mirror "
             f"{mirror}"]
    for name in STRATEGIES:
        entry, label = prediction[name], LABELS[name]
        if not entry["converges"]:
            lines.append(f"{label}: does not converge: {entry['reason']}")
        elif name == "postcopy":
            lines.append(f"{label}: {entry['total_s']:.1f} s, freeze ~{entry['freeze_ms']} ms, then "
                         f"{entry['postcopy_s']:.1f} s of post-copy (the guest runs slower)")
        elif name == "stateful":
            lines.append(f"{label}: {entry['total_s']:.1f} s, all of it frozen")
        else:
            throttle = f", throttle {entry['throttle_percent']} %" if entry["throttle_percent"] else ""
            lines.append(f"{label}: converges in {_passes(entry['passes'])}, {entry['total_s']:.1f} s, "
                         f"freeze ~{entry['freeze_ms']} ms{throttle}"
                         + (" (starves the guest)" if entry["guest_starved"] else ""))
    needed = prediction["downtime_needed_ms"]
    if not prediction["precopy"]["converges"] and prediction["mirror_s"] is not None:
        lines.append("pre-copy cannot converge at any downtime target" if needed is None
                     else f"pre-copy would converge with livemig_max_downtime_ms >= {needed}")
    return lines


def _error_percent(predicted: float | None, actual: float | None) -> float | None:
    if predicted is None or not actual:
        return None
    return round((predicted - actual) / actual * 100, 1)


def compare(predicted: dict[str, Any], actual_total_s: float | None,
            actual_downtime_ms: float | None = None) -> dict[str, Any]:
    """A strategy's prediction against a move's measured total time (and downtime, when given), for reports."""
    result = {"predicted_total_s": predicted["total_s"], "actual_total_s": actual_total_s,
              "error_percent": _error_percent(predicted["total_s"], actual_total_s)}
    if actual_downtime_ms is not None:
        result.update(predicted_freeze_ms=predicted["freeze_ms"], actual_downtime_ms=actual_downtime_ms,
                      downtime_error_percent=_error_percent(predicted["freeze_ms"], actual_downtime_ms))
    return result
