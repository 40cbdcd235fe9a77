# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan's prediction: the source's measurements (qemu_migration_probe) through the predictor (_predict), and what
`auto` makes of it.

Private to the livemig.qemu collection. Pure: the planner calls `forecast()` with the measurements and its own
choices. Under `livemig_convergence: auto` the prediction picks the runtime policy for a live move: `auto` while
pre-copy is expected to converge, `postcopy-early` when it is not and post-copy is allowed, and a refusal, with the
prediction and the options, when nothing live would keep the freeze within the target. Other convergence policies
are the user's own choice: the prediction is shown, never acted on.
"""
from __future__ import annotations

from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _predict

LIVE = ("live-shared", "live-mirror")
STRATEGY_POLICY = {"precopy": "auto", "precopy-throttled": "auto", "postcopy": "postcopy-early"}


class MeasurementError(ValueError):
    """The measurements are malformed; the message names the field."""


def measurements(measured: dict[str, Any], cap: int) -> _predict.Measurements:
    """The predictor's input from qemu_migration_probe's `measurements`."""
    if not isinstance(measured, dict) or "ram_bytes" not in measured:
        raise MeasurementError("the measurements need ram_bytes (qemu_migration_probe's measurements)")
    try:
        return _predict.Measurements(
            ram_bytes=int(measured["ram_bytes"]), link_rate=measured.get("link_rate"),
            ram_nonzero_bytes=measured.get("ram_resident_bytes"), disk_bytes=int(measured.get("disk_bytes") or 0),
            dirty_rate=float(measured.get("dirty_rate") or 0), cap=float(cap or 0),
            disk_write_rate=float(measured.get("disk_write_rate") or 0), stream_rate=measured.get("stream_rate"))
    except (TypeError, ValueError) as exc:
        raise MeasurementError(f"malformed measurements: {exc}") from exc


def _unmeasured(why: str, convergence: str) -> dict[str, Any]:
    return {"predicted": False, "measured": None, "figures": None, "strategy": None, "convergence": convergence,
            "reason": why, "refusal": None, "lines": [f"prediction: none ({why})"]}


def forecast(measured: dict[str, Any] | None, method: str | None, wishes: dict[str, Any],
             capabilities: list[str]) -> dict[str, Any]:
    """{predicted, measured, figures, strategy, convergence, reason, refusal, lines} for the plan.

    `capabilities`: those the plan enables on the source; post-copy and auto-converge count as allowed only when
    negotiated. `convergence` is the runtime policy qemu_migrate gets; `refusal` a reason not to start, or None.
    """
    convergence = wishes["convergence"]
    if not wishes.get("predict", True):
        return _unmeasured("livemig_predict is false", convergence)
    if not measured:
        return _unmeasured("the source was not measured" if method in LIVE else "not a live move", convergence)
    if measured.get("dirty_rate") is None and measured.get("dirty_rate_error"):
        return _unmeasured(f"the dirty rate could not be measured: {measured['dirty_rate_error']}", convergence)
    try:
        figures = _predict.predict(measurements(measured, wishes["max_bandwidth"]),
                                   _predict.PredictSettings(max_downtime_ms=wishes["max_downtime_ms"]))
    except (MeasurementError, ValueError) as exc:
        return _unmeasured(str(exc), convergence)
    if not figures["predicted"] and measured.get("link_error"):
        figures["precopy"]["reason"] = f"the link could not be measured: {measured['link_error']}"
    allowed = {"postcopy"} if "postcopy-ram" in capabilities else set()
    if "auto-converge" in capabilities:
        allowed.add("precopy-throttled")
    choice = _predict.choose(figures, allowed, wishes["max_downtime_ms"])
    result = {"predicted": figures["predicted"], "measured": _shown(measured), "figures": figures,
              "strategy": choice["strategy"], "convergence": convergence, "reason": choice["reason"],
              "refusal": None, "lines": _predict.summary_lines(figures)}
    if method not in LIVE or convergence != "auto" or not figures["predicted"]:
        return result
    if choice["strategy"] is None:
        result["refusal"] = f"{choice['reason']}; or move it anyway under the runtime policy: livemig_predict: false"
    else:
        result["convergence"] = STRATEGY_POLICY[choice["strategy"]]
        result["lines"].append(f"auto picks {_predict.LABELS[choice['strategy']]}: {choice['reason']}")
    return result


def _shown(measured: dict[str, Any]) -> dict[str, Any]:
    """The figures the plan keeps (the probe's raw answer has more)."""
    keys = ("ram_bytes", "ram_resident_bytes", "disk_bytes", "dirty_rate", "dirty_rate_mode", "disk_write_rate",
            "link_rate", "link_error", "dirty_rate_error", "stream_rate", "stream_rate_source")
    return {key: measured.get(key) for key in keys if key in measured}


def predicted_entry(prediction: dict[str, Any] | None) -> dict[str, Any] | None:
    """The prediction of the strategy the move used, for the report; None when nothing was predicted."""
    if not prediction or not prediction.get("predicted"):
        return None
    strategy = "postcopy" if prediction.get("convergence") == "postcopy-early" else prediction.get("strategy")
    figures = prediction.get("figures") or {}
    return {"strategy": strategy, **figures[strategy]} if strategy in figures else None
