"""Measured moves of a VM under load in the lab, each with the correctness checks: used by the demo and the
benchmarks (docs/benchmarks.md)."""
from __future__ import annotations

import statistics
import time

from lab import RING_BLOCKS, Lab, guestcheck

FIGURES = ("guest_visible_downtime_ms", "guest_disturbance_ms", "disturbance_before_stop_ms",
           "disturbance_after_resume_ms", "qemu_downtime_ms", "stop_to_resume_ms",
           "total_time_s", "migration_time_ms", "ram_bytes", "disk_bytes", "mirror_processed_bytes", "passes")
BYTES = ("ram_bytes", "disk_bytes", "mirror_processed_bytes")


def failure_message(output: str) -> str:
    """The message of the play's first failed task (the `msg:` under Ansible's `fatal:` line, in the YAML result
    format the lab uses), else the output's end."""
    lines = output[output.find("fatal:"):].splitlines() if "fatal:" in output else []
    for index, line in enumerate(lines):
        key = line.lstrip()
        if key.startswith("msg:"):
            indent = len(line) - len(key)
            text = [key[4:].strip(" |>-")]
            for following in lines[index + 1:]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                text.append(following.strip())
            return " ".join(" ".join(text).split())[:2000]
    return output[-600:]


def medians(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs if run.get(key) is not None)
            for key in FIGURES if any(run.get(key) is not None for run in runs)}


def show(title: str, run: dict) -> None:
    print(f"\n== {title} ==")
    for key in FIGURES:
        value = run.get(key)
        if key in BYTES and value is not None:
            value = f"{value} ({value / 1048576:.1f} MiB)"
        print(f"  {key:28} {value}")
    for key, ok in run.get("checks", {}).items():
        print(f"  check {key:30} {'PASS' if ok else 'FAIL'}")


def other(host: str) -> str:
    return "hv2" if host == "hv1" else "hv1"


def check_disk_live(lab: Lab, name: str, host: str, digest: str, min_seq: int) -> dict:
    """Pause the guest (QEMU flushes its image), check the ring and the rest of the disk, resume it."""
    lab.qmp(host, name, "stop")
    try:
        image = lab.disk_path(name, host)
        ring = guestcheck.check_ring(image, RING_BLOCKS, min_seq=min_seq, force_share=True)
        identical = guestcheck.hash_outside_ring(image, RING_BLOCKS, force_share=True) == digest
    finally:
        lab.qmp(host, name, "cont")
    return {"disk_ring_intact": ring["ok"], "rest_of_disk_identical": identical, "ring_problems": ring["problems"][:5]}


def switchover_timeline(stats: dict, resume: float | None) -> dict | None:
    """Where the time between the source STOP and the target RESUME went, in ms, from QMP event times."""
    marks = [stats.get("source_stop_time"), stats.get("pre_switchover_time"), stats.get("mirrors_done_time"),
             stats.get("completed_time"), resume]
    if None in (marks[0], marks[3], marks[4]):
        return None
    stop, pre, mirrors, completed, resumed = (float(mark) if mark is not None else None for mark in marks)
    pre, mirrors = pre or stop, mirrors or pre or stop
    return {"stop_to_pre_switchover": round((pre - stop) * 1000, 1),
            "mirrors_finish": round((mirrors - pre) * 1000, 1),
            "last_ram_and_device_state": round((completed - mirrors) * 1000, 1),
            "completed_to_resume": round((resumed - completed) * 1000, 1)}


def move_checks(where: str, heartbeat: bool, summary: dict, disk: dict) -> dict[str, bool]:
    """The correctness checks of one move, by name: every one must hold."""
    return {f"heartbeats_continue_on_{where}": heartbeat,
            "heartbeat_sequence_continuous": summary["hb_seq_errors"] == 0,
            "no_page_check_failure": not summary["pagecheck_failures"],
            "disk_ring_intact": disk["disk_ring_intact"],
            "rest_of_disk_identical": disk["rest_of_disk_identical"]}


def outside_switchover(lines: list, source: str, stop: float) -> tuple[float, float, float]:
    """The largest heartbeat gaps (s) outside the switchover, over the whole play and both hosts: anywhere, before
    the source stopped the guest (the preparation, the mirror, pre-copy), after the target resumed it (post-copy,
    the hand-over). The switchover gap is the one from the source's last heartbeat before `stop` (the source's
    STOP event, else the play's end) to the next heartbeat on any host."""
    gaps = guestcheck.hb_gaps(lines)
    source_beats = [line[0] for line in lines if line[1] == source and line[0] <= stop and line[2].startswith("HB ")]
    last_before = max(source_beats, default=None)
    others = [(start, gap) for start, _end, gap in gaps if last_before is None or abs(start - last_before) > 1e-9]
    before = max((gap for start, gap in others if start < (last_before or stop)), default=0.0)
    after = max((gap for start, gap in others if start > (last_before or stop)), default=0.0)
    return max(before, after), before, after


def first_pass_bytes(stats: dict) -> int | None:
    """RAM sent by the end of the first pass: about the guest's non-zero RAM (zero pages cost nearly nothing)."""
    for sample in stats.get("history", []):
        if (sample.get("passes") or 0) >= 2:
            return sample.get("transferred")
    return stats.get("ram_transferred")


def prediction_figures(prediction: dict | None) -> dict:
    """The report's prediction of the strategy the move used beside its actual time, and the relative error
    (predicted / actual - 1; above 0, the move took less time than predicted). None where nothing was predicted."""
    prediction = prediction or {}
    predicted, actual = prediction.get("predicted_total_s"), prediction.get("actual_total_s")
    return {"strategy": prediction.get("strategy"), "predicted_total_s": predicted, "actual_total_s": actual,
            "prediction_error": round(predicted / actual - 1, 3) if predicted is not None and actual else None}


def series(lab: Lab, name: str, workload: str, runs: int, link_bytes_per_s: float | None = None,
           **extra_vars) -> list[dict]:
    """Start one VM and move it `runs` times between hv1 and hv2; every run is measured and checked."""
    return [run for _label, run in moves(lab, name, workload, [("", extra_vars)] * runs, link_bytes_per_s)]


def moves(lab: Lab, name: str, workload: str, plan: list[tuple[str, dict]],
          link_bytes_per_s: float | None = None, between=None, fill: str = "words") -> list[tuple[str, dict]]:
    """Start one VM, its working set filled with `fill` (words or random), and move it between hv1 and hv2 once per
    (label, migrate variables) of `plan`; every move is measured and checked. Between moves the guest is paused for
    a moment on its host to check its disk, outside every measured window. `between(host)`, when given, runs before
    every move, outside its window too (the benchmark moves another tool's VM there, with this one paused on
    `host`)."""
    lab.define_vm(name, workload, fill=fill)
    digest = lab.start(name, "hv1")
    tap = lab.tap(name)
    clock = time.time() - time.monotonic()  # wall clock (QMP, reports) minus the tap's monotonic clock
    results = []
    host = "hv1"
    try:
        tap.wait_for(r"^PC \d+ OK", label=host, timeout=90)
        for label, extra_vars in plan:
            if between:
                between(host)
            target = other(host)
            began = time.monotonic()
            outcome = lab.migrate(name, host, target, **extra_vars)
            ended = time.monotonic()
            completed = not outcome.failed
            where = target if completed else host
            heartbeat = tap.wait_for(r"^HB \d+", label=where, timeout=30, since=ended) is not None
            tap.wait_for(r"^PC \d+ OK", label=where, timeout=90, since=ended)
            lines = [line for line in tap.snapshot() if line[0] >= began]
            summary = guestcheck.analyze(lines)
            report = lab.report(name) if completed else {}
            stats = report.get("statistics", {})
            live = report.get("method", "").startswith("live")
            stop = float(report["source_stop_time"]) - clock if report.get("source_stop_time") else ended
            outside, before_stop, after_resume = outside_switchover(lines, host, stop)
            disk = check_disk_live(lab, name, where, digest, summary["last_ring_seq"])
            ram = first_pass_bytes(stats) if live else int(report.get("state_bytes") or 0) or None
            disk_bytes = int(report.get("disk_bytes") or 0) if completed else None
            bound = (ram + disk_bytes) / link_bytes_per_s if completed and ram and link_bytes_per_s else None
            results.append((label, {
                "workload": workload, "fill": fill, "from": host, "to": target, "completed": completed,
                "method": report.get("method"),
                "failure": None if completed else failure_message(outcome.output),
                "guest_visible_downtime_ms": round(summary["max_gap_s"] * 1000, 1),
                "guest_disturbance_ms": round(outside * 1000, 1),
                "disturbance_before_stop_ms": round(before_stop * 1000, 1),
                "disturbance_after_resume_ms": round(after_resume * 1000, 1),
                "qemu_downtime_ms": stats.get("downtime_ms") if live else None,
                "stop_to_resume_ms": report.get("frozen_ms"),
                "total_time_s": round(ended - began, 2),
                "migration_time_ms": stats.get("total_time_ms") if live else None,
                "ram_bytes": stats.get("ram_transferred") if live else (int(report["state_bytes"]) if completed else None),
                "disk_bytes": disk_bytes,
                "mirror_processed_bytes": stats.get("mirror_processed_bytes") if live else None,
                "passes": stats.get("passes") if live else None,
                "postcopy": stats.get("postcopy_started") if live else None,
                "policy_actions": [{key: action[key] for key in ("t", "action", "parameters") if key in action}
                                   for action in stats.get("policy_actions", [])],
                "timeline_ms": switchover_timeline(stats, report.get("target_resume_time")) if live else None,
                "bound_s": round(bound, 3) if bound else None,
                "total_to_bound": round((ended - began) / bound, 1) if bound else None,
                "migration_to_bound": round(stats["total_time_ms"] / 1000 / bound, 2)
                if bound and live and stats.get("total_time_ms") else None,
                **prediction_figures(report.get("prediction")),
                "checks": move_checks(where, heartbeat, summary, disk),
                "ring_problems": disk["ring_problems"],
            }))
            host = where
    finally:
        tap.stop()
        lab.remove(name)
    return results
