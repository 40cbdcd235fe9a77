#!/usr/bin/env python
"""The benchmark matrix of docs/benchmarks.md in the two-host lab: policies x workloads x links, 3 runs each.

Every run moves the test guest with the documented migrate playbook and is checked (heartbeats continue, no
page-check failure, disk ring intact, rest of the disk identical). One VM per workload and link is moved back and
forth by each policy in turn. Prints a table of medians and saves every
figure as JSON. Run through benchmarks/run.sh, which prepares the machine; --smoke runs one case once.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "harness"))
from lab import Lab, build_guest, lab_up, link  # noqa: E402
from measure import moves  # noqa: E402

# Each run may take this long; a move not finished by then counts as not completed. QEMU's defaults get less:
# where they cannot converge they never finish, and waiting longer would only stretch the benchmark.
RUN_TIMEOUT_S = 120
DEFAULTS_TIMEOUT_S = 40
POLICIES = {
    "qemu-defaults": {"livemig_convergence": "defaults", "livemig_migration_timeout": DEFAULTS_TIMEOUT_S},
    "auto": {"livemig_convergence": "auto"},
    "auto-multifd": {"livemig_convergence": "auto", "livemig_multifd_channels": 4},
    "postcopy-early": {"livemig_convergence": "postcopy-early", "livemig_allow_postcopy": True},
    "stateful": {"livemig_method": "stateful"},
    # The same in cleartext, against which TLS's cost is measured.
    "auto-tcp": {"livemig_convergence": "auto", "livemig_transport": "tcp"},
    "stateful-tcp": {"livemig_method": "stateful", "livemig_transport": "tcp"},
}
DEFAULT_POLICIES = ("qemu-defaults", "auto", "auto-multifd", "postcopy-early", "stateful")
WORKLOADS = ("idle", "light", "heavy")
LINKS = {"unlimited": None, "1gbit": "1gbit"}
MEDIANS = ("guest_visible_downtime_ms", "guest_disturbance_ms", "qemu_downtime_ms", "stop_to_resume_ms",
           "total_time_s", "migration_time_ms", "ram_bytes", "disk_bytes", "passes", "bound_s", "total_to_bound",
           "migration_to_bound")


def link_rate(size: int = 256 << 20) -> float:
    """Bytes per second from hv1 to hv2 over their migration link, measured with a plain TCP stream."""
    port = 40000 + os.getpid() % 20000
    server = subprocess.Popen(
        ["ip", "netns", "exec", "hv2", sys.executable, "-c",
         "import socket,sys\ns=socket.create_server(('198.18.0.102',%d))\nc,_=s.accept()\n"
         "while c.recv(1<<20): pass\nc.close()" % port])
    try:
        time.sleep(0.5)
        script = ("import socket,time\nc=socket.create_connection(('198.18.0.102',%d))\nb=bytes(1<<20)\n"
                  "t=time.monotonic()\nfor _ in range(%d): c.sendall(b)\nc.shutdown(1)\nc.recv(1)\n"
                  "print(time.monotonic()-t)" % (port, size >> 20))
        seconds = float(subprocess.run(["ip", "netns", "exec", "hv1", sys.executable, "-c", script],
                                       capture_output=True, text=True, check=True, timeout=120).stdout)
    finally:
        server.wait(30)
    return size / seconds


def medians(runs: list[dict]) -> dict:
    done = [run for run in runs if run["completed"]]
    figures = {key: statistics.median(run[key] for run in done if run.get(key) is not None)
               for key in MEDIANS if any(run.get(key) is not None for run in done)}
    figures["completed"] = f"{len(done)}/{len(runs)}"
    figures["checks_pass"] = all(all(run["checks"].values()) for run in runs)
    figures["postcopy"] = sum(bool(run.get("postcopy")) for run in runs)
    return figures


def table(cases: list[dict]) -> str:
    columns = ("policy", "workload", "link", "completed", "guest_visible_downtime_ms", "qemu_downtime_ms",
               "stop_to_resume_ms", "guest_disturbance_ms", "total_time_s", "migration_time_ms", "ram_bytes",
               "disk_bytes", "passes", "postcopy", "total_to_bound", "migration_to_bound", "checks_pass")
    heads = ("policy", "workload", "link", "done", "guest ms", "QEMU ms", "STOP-RESUME ms", "disturb ms",
             "total s", "migr ms", "RAM MiB", "disk MiB", "passes", "postcopy", "total/bound", "migr/bound", "checks")

    def cell(case: dict, key: str) -> str:
        value = case.get(key, case["medians"].get(key))
        if value is None:
            return "-"
        if key in ("ram_bytes", "disk_bytes"):
            return f"{value / 1048576:.1f}"
        if key == "checks_pass":
            return "PASS" if value else "FAIL"
        return f"{value:g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(cell(case, key) for key in columns) + " |" for case in cases]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="one case (auto, light, unlimited link), one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(DEFAULT_POLICIES))
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--links", nargs="+", choices=LINKS, default=list(LINKS))
    parser.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results.json"))
    options = parser.parse_args()
    if options.smoke:
        options.policies, options.workloads, options.links, options.runs = ["auto"], ["light"], ["unlimited"], 1

    lab_up()
    lab = Lab(build_guest(), tempfile.mkdtemp(prefix="livemig-bench-"))
    began = time.monotonic()
    cases = []
    for link_name in options.links:
        if LINKS[link_name]:
            link("hv2", "limit", LINKS[link_name])
        try:
            rate = link_rate()
            for workload in options.workloads:
                # One VM per workload and link, moved back and forth by every policy in turn: boots are slow.
                print(f"== {workload} workload, {link_name} link ({rate * 8 / 1e9:.2f} Gbit/s measured): "
                      f"{', '.join(options.policies)}, {options.runs} moves each", flush=True)
                # Interleaved (every policy once, then again), so that a slow spell of the machine hits them alike.
                plan = [(policy, {"livemig_migration_timeout": RUN_TIMEOUT_S, **POLICIES[policy]})
                        for _run in range(options.runs) for policy in options.policies]
                done = moves(lab, f"bench-{workload}-{link_name}", workload, plan, rate)
                for policy in options.policies:
                    runs = [run for label, run in done if label == policy]
                    case = {"policy": policy, "workload": workload, "link": link_name, "link_bytes_per_s": rate,
                            "runs": runs, "medians": medians(runs)}
                    case["completed"] = case["medians"]["completed"]
                    cases.append(case)
                    print(table([case]).splitlines()[-1], flush=True)
        finally:
            if LINKS[link_name]:
                link("hv2", "unlimit")
    elapsed = time.monotonic() - began
    summary = table(cases)
    print(f"\nmedians of {options.runs} run(s) per case, {elapsed / 60:.1f} min in all\n\n{summary}")
    with open(options.json, "w", encoding="utf-8") as handle:
        json.dump({"runs_per_case": options.runs, "run_timeout_s": RUN_TIMEOUT_S,
                   "qemu_defaults_timeout_s": DEFAULTS_TIMEOUT_S, "elapsed_s": round(elapsed),
                   "cases": cases, "table": summary}, handle, indent=2)
    print(f"\nsaved {options.json}")
    return 0 if all(case["medians"]["checks_pass"] for case in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
