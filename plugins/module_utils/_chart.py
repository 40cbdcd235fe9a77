# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration report: its file name, and a chart of what was left to copy over time.

Private to the livemig.qemu collection. Runs on the controller (the action plugin
qemu_migration_report). `chart_data()` is pure; `render_png()` draws with
matplotlib's Agg canvas, which is optional: without matplotlib it raises
ChartUnavailable.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import SpecError, check_vm_name

MIB = 1 << 20
REPORT_MODE = 0o644  # reports are for people on the controller, like any file a playbook writes there
EPOCH_FLOOR = 1e9  # a time below this (2001) is seconds since the migration started, not an epoch time


class ReportError(LivemigError, ValueError):
    """The migration result cannot be reported; the message says why."""


class ChartUnavailable(LivemigError):
    """matplotlib cannot be imported on this controller."""


@dataclass
class ChartData:
    """What the chart shows; times are seconds since the move started, sizes MiB."""
    title: str
    ram: list[tuple[float, float]] = field(default_factory=list)
    disk: list[tuple[float, float]] = field(default_factory=list)
    switchover: tuple[float, float] | None = None
    postcopy: float | None = None


def number(value: Any) -> float | None:
    """A finite float from an int, float or numeric string; None for anything else (bools, '', None)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def report_basename(result: dict[str, Any]) -> str:
    """`<vm>-<int(finished)>`, the name of the report's files without the extension."""
    try:
        vm = check_vm_name(result.get("vm"))
    except SpecError as exc:
        raise ReportError(f"result.vm: {exc}") from exc
    finished = number(result.get("finished"))
    if finished is None:
        raise ReportError(f"result.finished must be the epoch time the move finished, got {result.get('finished')!r}")
    return f"{vm}-{int(finished)}"


def _statistics(result: dict[str, Any]) -> dict[str, Any]:
    statistics = result.get("statistics")
    return statistics if isinstance(statistics, dict) else {}


def _samples(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _clock(result: dict[str, Any]) -> tuple[float, float]:
    """(started, migration start): the chart's zero, and the epoch time that relative sample times count from."""
    statistics = _statistics(result)
    epochs = [t for t in (number(item.get("t")) for item in
                          _samples(statistics.get("history")) + _samples(statistics.get("mirror_history")))
              if t is not None and t >= EPOCH_FLOOR]
    started = number(result.get("started"))
    if started is None:
        started = min(epochs) if epochs else 0.0
    completed, wall = number(statistics.get("completed_time")), number(statistics.get("wall_time_s"))
    migration_start = completed - wall if completed is not None and wall is not None else started
    return started, migration_start


def _since(t: float, started: float, migration_start: float) -> float:
    """Seconds since the move started, for an epoch time or one relative to the migration start."""
    return round(t - started if t >= EPOCH_FLOOR else migration_start + t - started, 3)


def _series(samples: list[dict[str, Any]], key: str, started: float, migration_start: float
            ) -> list[tuple[float, float]]:
    points = []
    for item in samples:
        t, value = number(item.get("t")), number(item.get(key))
        if t is not None and value is not None:
            points.append((_since(t, started, migration_start), value / MIB))
    return sorted(points)


def _title(result: dict[str, Any]) -> str:
    frozen = number(result.get("frozen_ms"))
    frozen_text = f"guest frozen {frozen:g} ms" if frozen is not None else "frozen time unknown"
    return (f"{result.get('vm', '?')}: {result.get('source', '?')} \N{RIGHTWARDS ARROW} {result.get('target', '?')}, "
            f"{result.get('method', '?')}, {frozen_text}")


def chart_data(result: dict[str, Any]) -> ChartData:
    """Remaining RAM and disk over time, the switchover band and the post-copy start, from the role's result."""
    statistics = _statistics(result)
    started, migration_start = _clock(result)
    history = _samples(statistics.get("history"))
    data = ChartData(
        title=_title(result),
        ram=_series(history, "remaining", started, migration_start),
        disk=sorted(_series(_samples(statistics.get("mirror_history")), "disk_remaining", started, migration_start)
                    + _series(history, "disk_remaining", started, migration_start)),
    )
    stop = number(result.get("source_stop_time"))
    resume = number(result.get("target_resume_time"))
    if stop is not None and resume is not None:
        data.switchover = (round(min(stop, resume) - started, 3), round(max(stop, resume) - started, 3))
    if statistics.get("postcopy_started"):
        times = [t for t in (number(item.get("t")) for item in history if item.get("phase") == "post-copy")
                 if t is not None]
        if times:
            data.postcopy = _since(min(times), started, migration_start)
    return data


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ChartUnavailable(str(exc)) from exc
    return Figure, FigureCanvasAgg


def render_png(data: ChartData, path: str) -> None:
    """Draw the chart into `path` (replaced atomically) with matplotlib's Agg canvas."""
    figure_class, canvas_class = _matplotlib()
    figure = figure_class(figsize=(10, 5), dpi=100, layout="constrained")
    canvas_class(figure)
    axes = figure.add_subplot()
    if data.ram:
        axes.plot(*zip(*data.ram), marker=".", label="RAM remaining")
    if data.disk:
        axes.plot(*zip(*data.disk), marker=".", label="disk remaining")
    if data.switchover is not None:
        start, end = data.switchover
        axes.axvspan(start, end, color="tab:red", alpha=0.3, linewidth=1,
                     label=f"switchover, source stop to target resume ({(end - start) * 1000:.0f} ms)")
    if data.postcopy is not None:
        axes.axvline(data.postcopy, color="tab:purple", linestyle="--", label="post-copy starts")
    if not (data.ram or data.disk):
        axes.text(0.5, 0.5, "no progress samples", transform=axes.transAxes, ha="center", va="center")
    axes.set_title(data.title)
    axes.set_xlabel("seconds since the move started")
    axes.set_ylabel("MiB left to copy")
    axes.set_ylim(bottom=0)
    if min((point[0] for point in data.ram + data.disk), default=0) >= 0:
        axes.set_xlim(left=0)
    axes.grid(True, alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best")
    image = io.BytesIO()
    figure.savefig(image, format="png")
    _files.atomic_write(path, image.getvalue(), mode=REPORT_MODE, durable=False)
