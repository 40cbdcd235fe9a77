#!/usr/bin/env python
"""Live-migrate a demo VM (1 GiB local disk, a guest under load) from hv1 to hv2 in the lab, and report.

Run through scripts/demo.sh, which prepares the machine first. With --runs N it repeats the move N times and
prints the medians; --json saves every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "harness"))
from lab import RING_BLOCKS, Lab, build_guest, guestcheck, lab_path, lab_up  # noqa: E402


def one_run(lab: Lab, name: str, workload: str) -> dict:
    lab.define_vm(name, workload)
    digest = lab.start(name, "hv1")
    tap = lab.tap(name)
    try:
        tap.wait_for(r"^PC \d+ OK", label="hv1", timeout=90)
        began = time.monotonic()
        result = lab.migrate(name, "hv1", "hv2")
        ended = time.monotonic()
        if result.failed:
            raise RuntimeError(f"the migration failed:\n{result.output}")
        heartbeat_on_target = tap.wait_for(r"^HB \d+", label="hv2", timeout=30, since=ended) is not None
        tap.wait_for(r"^PC \d+ OK", label="hv2", timeout=90, since=ended)
    finally:
        tap.stop()
    lines = tap.snapshot()
    summary = guestcheck.analyze(lines)
    source_gaps = [gap for _t_prev, _t_next, gap in guestcheck.hb_gaps(lines, "hv1")]
    lab.stop(name)
    image = lab_path("hv2", "images", f"{name}-root.qcow2")
    ring = guestcheck.check_ring(image, RING_BLOCKS, min_seq=summary["last_ring_seq"])
    identical = guestcheck.hash_outside_ring(image, RING_BLOCKS) == digest
    report = lab.report(name)
    stats = report["statistics"]
    lab.remove(name)
    resume = report.get("target_resume_time")
    return {
        "workload": workload,
        "guest_visible_downtime_ms": round(summary["max_gap_s"] * 1000, 1),
        "guest_disturbance_ms": round(max(source_gaps, default=0) * 1000, 1),
        "qemu_downtime_ms": stats["downtime_ms"],
        "stop_to_resume_ms": round((float(resume) - stats["source_stop_time"]) * 1000, 1) if resume else None,
        "total_time_s": round(ended - began, 2),
        "migration_time_ms": stats["total_time_ms"],
        "ram_bytes": stats["ram_transferred"],
        "disk_bytes": sum(report["disk_allocated"].values()),  # allocated on the target: the data that crossed
        "mirror_processed_bytes": stats["mirror_processed_bytes"],
        "passes": stats["passes"],
        "checks": {
            "heartbeats_continue_on_hv2": heartbeat_on_target and summary["hb_by_label"].get("hv2", (0,))[0] > 0,
            "no_page_check_failure": not summary["pagecheck_failures"],
            "disk_ring_intact": ring["ok"],
            "rest_of_disk_identical": identical,
        },
        "ring_problems": ring["problems"][:5],
    }


FIGURES = ("guest_visible_downtime_ms", "guest_disturbance_ms", "qemu_downtime_ms", "stop_to_resume_ms",
           "total_time_s", "migration_time_ms", "ram_bytes", "disk_bytes", "mirror_processed_bytes", "passes")


def show(title: str, run: dict) -> None:
    print(f"\n== {title} ==")
    for key in FIGURES:
        value = run.get(key)
        if key in ("ram_bytes", "disk_bytes", "mirror_processed_bytes") and value is not None:
            value = f"{value} ({value / 1048576:.1f} MiB)"
        print(f"  {key:28} {value}")
    for key, ok in run.get("checks", {}).items():
        print(f"  check {key:22} {'PASS' if ok else 'FAIL'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", choices=("idle", "light", "heavy"), default="light")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", help="save all figures to this file")
    options = parser.parse_args()

    lab_up()
    lab = Lab(build_guest(), tempfile.mkdtemp(prefix="livemig-demo-"))
    runs = []
    for index in range(options.runs):
        run = one_run(lab, f"demo-{options.workload}-{index + 1}", options.workload)
        show(f"run {index + 1} of {options.runs}: {options.workload} workload, hv1 -> hv2", run)
        runs.append(run)
    medians = {key: statistics.median(run[key] for run in runs if run[key] is not None)
               for key in FIGURES if any(run[key] is not None for run in runs)}
    if options.runs > 1:
        show(f"median of {options.runs} runs", medians)
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump({"runs": runs, "medians": medians}, handle, indent=2)
        print(f"\nsaved {options.json}")
    return 0 if all(all(run["checks"].values()) for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
