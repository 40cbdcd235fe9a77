# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a move's time went: its phases as spans of time, from the role's result, for the report's chart.

Private to the livemig.qemu collection. Pure functions. Times come in two kinds: epoch seconds (the role's stamps,
QMP event times, disk mirror samples) and, in the RAM migration's history, seconds since the migration started.
`Clock` turns both into seconds since the chart's zero: the play's start when the result has it, else the move's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._outcome import EPOCH_FLOOR


@dataclass(frozen=True)
class Band:
    """A phase on the chart, in seconds since the chart's zero; `label` tells one of several bands of a phase apart
    (the pre-copy passes)."""
    phase: str
    start: float
    end: float
    label: str = ""


def number(value: Any) -> float | None:
    """A finite float from an int, float or numeric string; None for anything else (bools, '', None)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def statistics(result: dict[str, Any]) -> dict[str, Any]:
    found = result.get("statistics")
    return found if isinstance(found, dict) else {}


def samples(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


@dataclass(frozen=True)
class Clock:
    """The chart's zero (epoch seconds), the move's start and, when known, the RAM migration's start (QEMU's
    completion less the migration's wall time)."""
    zero: float
    move_started: float
    migration_started: float | None

    @classmethod
    def of(cls, result: dict[str, Any]) -> Clock:
        figures = statistics(result)
        epochs = [t for t in (number(item.get("t")) for item in
                              samples(figures.get("history")) + samples(figures.get("mirror_history")))
                  if t is not None and t >= EPOCH_FLOOR]
        move_started = number(result.get("started"))
        if move_started is None:
            move_started = min(epochs) if epochs else 0.0
        completed, wall = number(figures.get("completed_time")), number(figures.get("wall_time_s"))
        ram_epochs = [t for t in (number(item.get("t")) for item in samples(figures.get("history")))
                      if t is not None and t >= EPOCH_FLOOR]
        if completed is not None and wall is not None:
            migration_started: float | None = completed - wall
        else:  # no QEMU figures: the first RAM sample with an epoch time, if any
            migration_started = min(ram_epochs) if ram_epochs else None
        play_started = number(result.get("play_started"))
        zero = play_started if play_started is not None and play_started <= move_started else move_started
        return cls(zero, move_started, migration_started)

    def at(self, t: float) -> float:
        """Seconds since the zero, for an epoch time or one relative to the migration's start."""
        if t < EPOCH_FLOOR:
            t += self.move_started if self.migration_started is None else self.migration_started
        return round(t - self.zero, 3)

    def epoch(self, value: Any) -> float | None:
        """`at()` of an epoch time in the result; None when it is missing or no epoch time."""
        t = number(value)
        return self.at(t) if t is not None and t >= EPOCH_FLOOR else None


def _ram_samples(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for item in samples(statistics(result).get("history")) if number(item.get("t")) is not None]


def _precopy_end(result: dict[str, Any], clock: Clock) -> float | None:
    figures = statistics(result)
    for value in (result.get("source_stop_time"), figures.get("pre_switchover_time"), figures.get("completed_time")):
        end = clock.epoch(value)
        if end is not None:
            return end
    times = [clock.at(number(item["t"])) for item in _ram_samples(result) if item.get("phase") == "pre-copy"]
    return max(times) if times else None


def _passes(result: dict[str, Any], clock: Clock, start: float, end: float) -> list[Band]:
    """One band per pre-copy pass: pass 1 from the migration's start, each next one from its first sample."""
    starts = {1: start}
    for item in _ram_samples(result):
        passes, t = number(item.get("passes")), clock.at(number(item["t"]))
        if item.get("phase") == "pre-copy" and passes is not None and start <= t < end:
            starts.setdefault(int(passes), t)
    ordered = sorted(starts.items(), key=lambda pair: pair[1])
    ends = [t for unused_pass, t in ordered[1:]] + [end]
    return [Band("pre-copy", t, later, f"pass {count}") for (count, t), later in zip(ordered, ends) if later > t]


def _postcopy_start(result: dict[str, Any], clock: Clock) -> float | None:
    """When post-copy started: the completion less QEMU's post-copy time, else its first post-copy sample."""
    figures = statistics(result)
    if not figures.get("postcopy_started"):
        return None
    completed, postcopy_ms = number(figures.get("completed_time")), number(figures.get("postcopy_time_ms"))
    if completed is not None and postcopy_ms is not None and completed >= EPOCH_FLOOR:
        return clock.at(completed - postcopy_ms / 1000)
    times = [clock.at(number(item["t"])) for item in _ram_samples(result) if item.get("phase") == "post-copy"]
    return min(times) if times else None


def _migration_bands(result: dict[str, Any], clock: Clock, mirror_start: float | None) -> list[Band]:
    """Target start, disk mirror and the pre-copy passes of a live move: the spans before its switchover."""
    if clock.migration_started is None:
        return []
    migration = clock.at(clock.migration_started)
    bands = [Band("target start", clock.at(clock.move_started), mirror_start if mirror_start is not None else migration)]
    if mirror_start is not None:
        bands.append(Band("disk mirror", mirror_start, migration))
    end = _precopy_end(result, clock)
    postcopy = _postcopy_start(result, clock)
    if end is not None:
        bands += _passes(result, clock, migration, min(end, postcopy) if postcopy is not None else end)
    return bands


def phases(result: dict[str, Any], clock: Clock) -> list[Band]:
    """Every phase of the move whose start and end the result tells, in the order a live move goes through them:
    plan, target start, disk mirror, the pre-copy passes, switchover, post-copy, hand-over (a stateful or cold
    move has the plan, the switchover and the hand-over)."""
    figures = statistics(result)
    mirror_times = [t for t in (number(item.get("t")) for item in samples(figures.get("mirror_history")))
                    if t is not None and t >= EPOCH_FLOOR]
    mirror_start = clock.at(min(mirror_times)) if mirror_times else None
    bands = [Band("plan", 0.0, clock.at(clock.move_started))] if clock.zero < clock.move_started else []
    bands += _migration_bands(result, clock, mirror_start)
    stop, resume = clock.epoch(result.get("source_stop_time")), clock.epoch(result.get("target_resume_time"))
    if stop is not None and resume is not None:
        bands.append(Band("switchover", min(stop, resume), max(stop, resume)))
    completed, postcopy = clock.epoch(figures.get("completed_time")), _postcopy_start(result, clock)
    if postcopy is not None and completed is not None:
        bands.append(Band("post-copy", postcopy, completed))
    arrived = [t for t in (resume, completed) if t is not None]
    finished = clock.epoch(result.get("finished"))
    if arrived and finished is not None:
        bands.append(Band("hand-over", max(arrived), finished))
    return [band for band in bands if band.end >= band.start]
