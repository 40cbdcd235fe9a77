# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The figures of a finished move (the role's `livemig_result`, which the report saves) and the line telling them.

Private to the livemig.qemu collection. Pure functions over the results the live_migration role registered: each
method's steps are named below (`STEPS`).
"""
from __future__ import annotations

from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._forecast import predicted_entry
from ansible_collections.livemig.qemu.plugins.module_utils._predict import compare

MIB = 1048576
EPOCH_FLOOR = 1e9  # a sample time below this counts from the migration's start, not from the epoch
# The registered results each family of methods hands over, by the name the role gives them.
STEPS = {
    "live": ("migration", "resumed"),
    "stateful": ("saved", "loaded", "restored", "copies"),
    "cold": ("stopped_at", "resumed_at", "shutdown", "copies"),
}


class OutcomeError(LivemigError, ValueError):
    """The steps do not fit the method; the message names what is missing."""


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return 0


def _items(loop: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-item results of a registered loop."""
    return loop.get("results") or []


def _live(steps: dict[str, Any]) -> dict[str, Any]:
    """qemu_migrate started the mirrors, waited for them and migrated in one job: its result holds them all."""
    migration = steps["migration"]
    statistics = migration.get("statistics", {})
    allocated = steps["resumed"].get("disk_allocated", {})
    history = migration.get("mirror_history") or []
    return {
        "source_stop_time": statistics.get("source_stop_time"),
        "target_resume_time": steps["resumed"].get("resume_time"),
        "disk_bytes": sum(allocated.values()),
        "disk_allocated": allocated,
        "mirrors": list(migration.get("mirrors") or []),
        "statistics": statistics,
        "mirror_history": sorted(history, key=lambda sample: sample["t"]),
    }


def _stateful(steps: dict[str, Any]) -> dict[str, Any]:
    saved, loaded, restored = steps["saved"], steps["loaded"], steps["restored"]
    disks, state = steps["copies"][:-1], steps["copies"][-1]  # the source's job sends the state file last
    return {
        "source_stop_time": saved.get("stop_time"),
        "target_resume_time": restored.get("resume_time"),
        "state_bytes": saved.get("size"),
        "disk_bytes": sum(copy["bytes_allocated"] for copy in disks),
        "statistics": {"save": saved, "restore": {**loaded, **restored},
                       "copies": [copy["seconds"] for copy in disks], "state_copy_s": state["seconds"]},
    }


def _cold(steps: dict[str, Any]) -> dict[str, Any]:
    copies = _items(steps["copies"])
    return {
        "source_stop_time": steps["stopped_at"],
        "target_resume_time": steps["resumed_at"],
        "disk_bytes": sum(copy["bytes_allocated"] for copy in copies),
        "statistics": {"stopped_by": steps["shutdown"].get("stopped_by"),
                       "copies": [copy["seconds"] for copy in copies]},
    }


FIGURES = {"live": _live, "stateful": _stateful, "cold": _cold}


def _ran(step: Any) -> bool:
    """A registered result of a task that ran (not one skipped by its condition, not left out)."""
    return isinstance(step, dict) and bool(step) and not step.get("skipped")


def announcement(plan: dict[str, Any], announced: Any) -> dict[str, Any] | None:
    """How the target announced the guest's MACs: the rounds QEMU sent as the guest resumed, and announce-self."""
    announce = plan.get("announce") or {}
    if not announce.get("nics"):
        return None
    family = plan.get("family")
    on_resume = (announce.get("parameters") or {}).get("announce-rounds", 0) if family in ("live", "stateful") else 0
    return {"enabled": bool(announce.get("enabled")) and family in ("live", "stateful"),
            "macs": [nic["mac"] for nic in announce["nics"]], "rounds_on_resume": on_resume,
            "announce_self": _ran(announced)}


def guest_agent(ping: Any) -> dict[str, Any] | None:
    """The guest agent's answer on the target after the move, when the VM has an agent."""
    if not _ran(ping):
        return None
    return {"answered": bool(ping.get("answered")), "answer_ms": ping.get("answer_ms"), "msg": ping.get("msg")}


def build_result(steps: dict[str, Any], plan: dict[str, Any], started: Any, finished: Any,
                 play_started: Any = None) -> dict[str, Any]:
    """livemig_result: the method's figures, then who moved where, the plan, the times (the play's start, when
    given, the move's start and its end, epoch seconds) and the guest's freeze."""
    family = plan.get("family")
    if family not in FIGURES:
        raise OutcomeError(f"no figures for method {plan.get('method')!r}")
    missing = [name for name in STEPS[family] if name not in steps]
    if missing:
        raise OutcomeError(f"the {family} move's steps lack {', '.join(missing)}")
    figures = FIGURES[family](steps)
    stop, resume = figures["source_stop_time"], figures["target_resume_time"]
    frozen = round((_float(resume) - _float(stop)) * 1000, 1) if stop and resume else None
    return {**figures, "vm": plan["vm"], "source": plan["source"], "target": plan["target"],
            "method": plan["method"], "plan": plan["summary"], "started": _float(started), "finished": finished,
            "play_started": _float(play_started) if play_started is not None else None,
            "frozen_ms": frozen, "announce": announcement(plan, steps.get("announced")),
            "guest_agent": guest_agent(steps.get("guest_ping")),
            "prediction": predicted_against_actual(plan, figures, frozen)}


def predicted_against_actual(plan: dict[str, Any], figures: dict[str, Any], frozen: float | None
                             ) -> dict[str, Any] | None:
    """The prediction of the strategy the move used beside what happened: for a live move the time from the first
    disk mirror sample (else the migration's start) to completion and QEMU's downtime, for a stateful one the
    freeze; `measured_from` is the epoch time both count from. None when nothing was predicted."""
    prediction = plan.get("prediction") or {}
    if plan.get("family") == "stateful" and prediction.get("predicted"):
        entry = {"strategy": "stateful", **prediction["figures"]["stateful"]}
        actual = frozen / 1000 if frozen is not None else None
        return {"strategy": "stateful", **compare(entry, actual, frozen),
                "measured_from": figures.get("source_stop_time")}
    entry = predicted_entry(prediction)
    if entry is None or plan.get("family") != "live":
        return None
    statistics = figures.get("statistics") or {}
    completed, wall = statistics.get("completed_time"), statistics.get("wall_time_s")
    mirror_starts = [sample["t"] for sample in figures.get("mirror_history") or []
                     if isinstance(sample.get("t"), (int, float)) and sample["t"] >= EPOCH_FLOOR]
    if completed is not None and mirror_starts:
        actual, measured_from = round(_float(completed) - min(mirror_starts), 3), min(mirror_starts)
    elif wall is not None:
        actual = _float(wall)
        measured_from = round(_float(completed) - actual, 3) if completed is not None else None
    else:
        actual, measured_from = None, None
    return {"strategy": entry["strategy"], **compare(entry, actual, statistics.get("downtime_ms")),
            "measured_from": measured_from}


def result_line(result: dict[str, Any]) -> str:
    """What the move did, for a person: the guest's freeze, QEMU's downtime and RAM (live), the state file
    (stateful), the disks written and the time in all."""
    method, frozen = result["method"], result["frozen_ms"]
    if method == "cold":
        text = f"guest offline {frozen} ms and restarted"
    else:
        text = f"guest frozen {frozen} ms (source stop to target resume)"
    if method.startswith("live"):
        stats = result["statistics"]
        text += (f", QEMU downtime {stats['downtime_ms']} ms, RAM {round(stats['ram_transferred'] / MIB, 1)} MiB in "
                 f"{stats['passes']} passes")
    if method == "stateful":
        text += f", state file {round(_int(result['state_bytes']) / MIB, 1)} MiB"
    announce, agent = result.get("announce"), result.get("guest_agent")
    if announce:
        text += (f", MACs announced ({announce['rounds_on_resume']} rounds on resume"
                 f"{' + announce-self' if announce['announce_self'] else ''})" if announce["enabled"]
                 else ", MACs not announced")
    if agent:
        text += f", guest agent answered after {agent['answer_ms']} ms" if agent["answered"] else \
            ", guest agent did not answer"
    return (f"{result['vm']} now runs on {result['target']} ({method}): {text},\n"
            f"disks {round(_int(result['disk_bytes']) / MIB, 1)} MiB written, "
            f"{round(_float(result['finished']) - _float(result['started']), 1)} s in all.")
