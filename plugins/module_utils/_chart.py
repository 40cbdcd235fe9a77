# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration report: its file name, and a chart of where the time went and what was left to copy.

Private to the livemig.qemu collection. Runs on the controller (the action plugin
qemu_migration_report). `chart_data()` is pure; `render_png()` draws with
matplotlib's Agg canvas, which is optional: without matplotlib it raises
ChartUnavailable.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files
from ansible_collections.livemig.qemu.plugins.module_utils._chartphases import (
    Band, Clock, number, phases, samples, statistics)
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import SpecError, check_vm_name

MIB = 1 << 20
REPORT_MODE = 0o644  # reports are for people on the controller, like any file a playbook writes there


class ReportError(LivemigError, ValueError):
    """The migration result cannot be reported; the message says why."""


class ChartUnavailable(LivemigError):
    """matplotlib cannot be imported on this controller."""


@dataclass(frozen=True)
class PredictedEnd:
    """Where the prediction said the migration would end, and the words for it."""
    t: float
    label: str


@dataclass
class ChartData:
    """What the chart shows; times are seconds since the play (else the move) started, sizes MiB, rates MiB/s."""
    title: str
    ram: list[tuple[float, float]] = field(default_factory=list)
    disk: list[tuple[float, float]] = field(default_factory=list)
    link_rate: list[tuple[float, float]] = field(default_factory=list)
    dirty_rate: list[tuple[float, float]] = field(default_factory=list)
    phases: list[Band] = field(default_factory=list)
    prediction: PredictedEnd | None = None
    since_play: bool = False  # the zero is the play's start, not the move's


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


def _series(items: list[dict[str, Any]], key: str, clock: Clock) -> list[tuple[float, float]]:
    points = []
    for item in items:
        t, value = number(item.get("t")), number(item.get(key))
        if t is not None and value is not None:
            points.append((clock.at(t), value / MIB))
    return sorted(points)


def _ram_figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The history samples that hold QEMU's RAM figures (a mirror-sync sample has none)."""
    return [item for item in samples(statistics(result).get("history"))
            if number(item.get("t")) is not None and number(item.get("transferred")) is not None]


def link_rates(result: dict[str, Any], clock: Clock) -> list[tuple[float, float]]:
    """RAM sent per second between one sample and the next (MiB/s, at the later one); QEMU's mbps where no
    earlier sample is there to count from."""
    points = []
    previous = None
    for item in sorted(_ram_figures(result), key=lambda item: number(item["t"])):
        t, sent = number(item["t"]), number(item["transferred"])
        if previous is not None and t > previous[0]:
            points.append((clock.at(t), max(sent - previous[1], 0.0) / (t - previous[0]) / MIB))
        elif number(item.get("mbps")) is not None:
            points.append((clock.at(t), number(item["mbps"]) * 1e6 / 8 / MIB))
        previous = (t, sent)
    return points


def _prediction(result: dict[str, Any], clock: Clock) -> PredictedEnd | None:
    """The end of the migration as predicted: the time the actual one was measured from plus the predicted time."""
    prediction = result.get("prediction")
    if not isinstance(prediction, dict):
        return None
    start, total = clock.epoch(prediction.get("measured_from")), number(prediction.get("predicted_total_s"))
    if start is None or total is None:
        return None
    error = number(prediction.get("error_percent"))
    error_text = f", {error:+g} % off" if error is not None else ""
    return PredictedEnd(round(start + total, 3),
                        f"predicted end ({prediction.get('strategy', '?')}, {total:g} s{error_text})")


def _title(result: dict[str, Any]) -> str:
    frozen = number(result.get("frozen_ms"))
    frozen_text = f"guest frozen {frozen:g} ms" if frozen is not None else "frozen time unknown"
    return (f"{result.get('vm', '?')}: {result.get('source', '?')} \N{RIGHTWARDS ARROW} {result.get('target', '?')}, "
            f"{result.get('method', '?')}, {frozen_text}")


def chart_data(result: dict[str, Any]) -> ChartData:
    """Remaining RAM and disk, the link and dirty rates, the phases and the predicted end, from the role's result."""
    clock = Clock.of(result)
    history = samples(statistics(result).get("history"))
    return ChartData(
        title=_title(result),
        ram=_series(history, "remaining", clock),
        disk=sorted(_series(samples(statistics(result).get("mirror_history")), "disk_remaining", clock)
                    + _series(history, "disk_remaining", clock)),
        link_rate=link_rates(result, clock),
        dirty_rate=_series(_ram_figures(result), "dirty_rate", clock),
        phases=phases(result, clock),
        prediction=_prediction(result, clock),
        since_play=clock.zero < clock.move_started,
    )


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ChartUnavailable(str(exc)) from exc
    return Figure, FigureCanvasAgg


# Each phase's colour; the pre-copy passes alternate between two shades of it.
PHASE_COLOURS = {"plan": "tab:gray", "target start": "tab:olive", "disk mirror": "tab:cyan", "pre-copy": "tab:green",
                 "switchover": "tab:red", "post-copy": "tab:purple", "hand-over": "tab:brown"}


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _phase_label(phase: str, bands: list[Band]) -> str:
    took = _duration(sum(band.end - band.start for band in bands))
    if phase != "pre-copy":
        return f"{phase} ({took})"
    return f"{phase}, {len(bands)} {'pass' if len(bands) == 1 else 'passes'} ({took})"


def _draw_phases(axes: Any, bands: list[Band]) -> None:
    """One band per phase (a legend entry each, with the time it took), the pre-copy passes named on the band."""
    drawn: list[str] = []
    for band in bands:
        same = [other for other in bands if other.phase == band.phase]
        label = _phase_label(band.phase, same) if band.phase not in drawn else None
        shade = 0.12 if drawn.count(band.phase) % 2 else 0.25  # next passes alternate, to tell them apart
        drawn.append(band.phase)
        axes.axvspan(band.start, band.end, color=PHASE_COLOURS[band.phase], alpha=shade,
                     linewidth=0, label=label)
        if band.label:
            axes.text((band.start + band.end) / 2, 0.98, band.label, rotation=90, ha="center", va="top",
                      fontsize="x-small", transform=axes.get_xaxis_transform())


def _draw_rates(axes: Any, data: ChartData) -> list[Any]:
    """The link and dirty rates on a second y axis, when the result has them; that axis' legend handles."""
    if not (data.link_rate or data.dirty_rate):
        return []
    rates = axes.twinx()
    if data.link_rate:
        rates.plot(*zip(*data.link_rate), color="navy", linestyle=":", label="link rate (RAM sent)")
    if data.dirty_rate:
        rates.plot(*zip(*data.dirty_rate), color="darkred", linestyle=":", label="dirty rate")
    rates.set_ylabel("MiB/s")
    rates.set_ylim(bottom=0)
    return rates.get_legend_handles_labels()[0]


def render_png(data: ChartData, path: str) -> None:
    """Draw the chart into `path` (replaced atomically) with matplotlib's Agg canvas."""
    figure_class, canvas_class = _matplotlib()
    figure = figure_class(figsize=(13, 5.5), dpi=100, layout="constrained")
    canvas_class(figure)
    axes = figure.add_subplot()
    _draw_phases(axes, data.phases)
    if data.ram:
        axes.plot(*zip(*data.ram), marker=".", markersize=3, color="tab:blue", label="RAM remaining")
    if data.disk:
        axes.plot(*zip(*data.disk), marker=".", markersize=3, color="tab:orange", label="disk remaining")
    if data.prediction is not None:
        axes.axvline(data.prediction.t, color="black", linestyle="--", label=data.prediction.label)
    if not (data.ram or data.disk):
        axes.text(0.5, 0.5, "no progress samples", transform=axes.transAxes, ha="center", va="center")
    rate_handles = _draw_rates(axes, data)
    axes.set_title(data.title)
    axes.set_xlabel(f"seconds since the {'play' if data.since_play else 'move'} started")
    axes.set_ylabel("MiB left to copy")
    axes.set_ylim(bottom=0)
    if min((point[0] for point in data.ram + data.disk), default=0) >= 0:
        axes.set_xlim(left=0)
    axes.grid(True, alpha=0.3)
    handles = axes.get_legend_handles_labels()[0] + rate_handles
    if handles:
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.06, 1), fontsize="small")
    image = io.BytesIO()
    figure.savefig(image, format="png")
    _files.atomic_write(path, image.getvalue(), mode=REPORT_MODE, durable=False)
