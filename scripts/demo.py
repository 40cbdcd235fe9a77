#!/usr/bin/env python
"""Live-migrate a demo VM (1 GiB local disk, a guest under load) from hv1 to hv2 in the lab, and report.

Run through scripts/demo.sh, which prepares the machine first. With --runs N it repeats the move N times and
prints the medians; --json saves every figure; --method stateful measures the stateful path on the same case.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "harness"))
from lab import Lab, build_guest, lab_up  # noqa: E402
from measure import medians, series, show  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", choices=("idle", "light", "heavy"), default="light")
    parser.add_argument("--method", choices=("live", "stateful"), default="live")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", help="save all figures to this file")
    options = parser.parse_args()

    lab_up()
    lab = Lab(build_guest(), tempfile.mkdtemp(prefix="livemig-demo-"))
    runs = []
    for index in range(options.runs):
        run = series(lab, f"demo-{options.workload}-{index + 1}", options.workload, 1,
                     livemig_method=options.method)[0]
        show(f"run {index + 1} of {options.runs}: {options.workload} workload, {run['method']}, hv1 -> hv2", run)
        runs.append(run)
    middle = medians(runs)
    if options.runs > 1:
        show(f"median of {options.runs} runs", middle)
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump({"runs": runs, "medians": middle}, handle, indent=2)
        print(f"\nsaved {options.json}")
    return 0 if all(all(run["checks"].values()) for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
