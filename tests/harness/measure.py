"""One measured move of a VM under load in the lab, with the correctness checks: used by the demo and the
benchmarks (DESIGN section 8)."""
from __future__ import annotations

import statistics
import time

from lab import RING_BLOCKS, Lab, guestcheck

FIGURES = ("guest_visible_downtime_ms", "guest_disturbance_ms", "qemu_downtime_ms", "stop_to_resume_ms",
           "total_time_s", "migration_time_ms", "ram_bytes", "disk_bytes", "mirror_processed_bytes", "passes")
BYTES = ("ram_bytes", "disk_bytes", "mirror_processed_bytes")


def one_run(lab: Lab, name: str, workload: str, source: str = "hv1", target: str = "hv2", **extra_vars) -> dict:
    """Start `name` on `source`, move it to `target` with the migrate playbook, check the guest and its disk."""
    lab.define_vm(name, workload)
    digest = lab.start(name, source)
    tap = lab.tap(name)
    try:
        tap.wait_for(r"^PC \d+ OK", label=source, timeout=90)
        began = time.monotonic()
        result = lab.migrate(name, source, target, **extra_vars)
        ended = time.monotonic()
        if result.failed:
            lab.remove(name)
            raise RuntimeError(f"the migration failed:\n{result.output}")
        heartbeat_on_target = tap.wait_for(r"^HB \d+", label=target, timeout=30, since=ended) is not None
        tap.wait_for(r"^PC \d+ OK", label=target, timeout=90, since=ended)
    finally:
        tap.stop()
    lines = tap.snapshot()
    summary = guestcheck.analyze(lines)
    source_gaps = [gap for _t_prev, _t_next, gap in guestcheck.hb_gaps(lines, source)]
    lab.stop(name)
    image = lab.disk_path(name, target)
    ring = guestcheck.check_ring(image, RING_BLOCKS, min_seq=summary["last_ring_seq"])
    identical = guestcheck.hash_outside_ring(image, RING_BLOCKS) == digest
    report = lab.report(name)
    lab.remove(name)
    stats = report.get("statistics", {})
    live = report["method"].startswith("live")
    return {
        "workload": workload,
        "method": report["method"],
        "guest_visible_downtime_ms": round(summary["max_gap_s"] * 1000, 1),
        "guest_disturbance_ms": round(max(source_gaps, default=0) * 1000, 1),
        "qemu_downtime_ms": stats.get("downtime_ms") if live else None,
        "stop_to_resume_ms": report.get("frozen_ms"),
        "total_time_s": round(ended - began, 2),
        "migration_time_ms": stats.get("total_time_ms") if live else None,
        "ram_bytes": stats.get("ram_transferred") if live else int(report.get("state_bytes", 0)),
        "disk_bytes": int(report["disk_bytes"]),  # allocated on the target: the data that crossed
        "mirror_processed_bytes": stats.get("mirror_processed_bytes") if live else None,
        "passes": stats.get("passes") if live else None,
        "checks": {
            f"heartbeats_continue_on_{target}": heartbeat_on_target and summary["hb_by_label"].get(target, (0,))[0] > 0,
            "heartbeat_sequence_continuous": summary["hb_seq_errors"] == 0,
            "no_page_check_failure": not summary["pagecheck_failures"],
            "disk_ring_intact": ring["ok"],
            "rest_of_disk_identical": identical,
        },
        "ring_problems": ring["problems"][:5],
    }


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
