#!/usr/bin/env python
"""What a client of the VM sees during a live move: the Debian guest (tests/guest/build-debian.sh) in the lab, a
client in the client namespace with a TCP request every 10 ms, a ping every 10 ms and an SSH loop.

For the light and heavy workloads, with and without the target's announcement (livemig_announce), N live moves each
(the guest goes back and forth): the client's longest gap between answers (network outage), the ping gap, the
guest-visible downtime (its heartbeats), QEMU's downtime and the total time. Also the guest's boot time under TCG,
with BIOS and with UEFI. Prints medians and saves every figure as JSON. Run through benchmarks/run.sh's set-up, e.g.
`benchmarks/network.sh`; nothing else may run QEMU on this machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "harness"))
from debianguest import boot, move_with_clients  # noqa: E402
from lab import Lab, build_debian_guest, build_guest, lab_up  # noqa: E402

FIGURES = ("client_outage_ms", "ping_gap_ms", "ssh_gap_ms", "guest_visible_downtime_ms", "qemu_downtime_ms",
           "frozen_ms", "total_s", "agent_answer_ms")


def median(runs: list[dict], key: str):
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def table(cases: list[dict]) -> str:
    heads = ("workload", "announce", "runs ok", *FIGURES)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for case in cases:
        cells = [case["workload"], "on" if case["announce"] else "off", case["ok"],
                 *(f"{case['medians'][key]:g}" if case["medians"][key] is not None else "-" for key in FIGURES)]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", default=os.path.join(REPO, "benchmarks", "network.json"))
    options = parser.parse_args()
    lab_up()
    lab = Lab(build_guest(), tempfile.mkdtemp(prefix="livemig-netbench-"))
    debian = build_debian_guest()
    began = time.monotonic()
    boots = {}
    uefi = boot(lab, "netbench-uefi", debian, firmware="uefi")
    boots["uefi"] = uefi["boot_s"]
    uefi["tap"].stop()
    lab.remove(uefi["name"])
    guest = boot(lab, "netbench", debian)
    boots["bios"] = guest["boot_s"]
    print(f"boot under TCG to sshd + address: BIOS {boots['bios']} s, UEFI {boots['uefi']} s", flush=True)
    cases = []
    try:
        for workload in ("light", "heavy"):
            for announce in (True, False):
                runs = []
                for number in range(options.runs):
                    run = move_with_clients(lab, guest, workload, livemig_announce=announce)
                    run["ok"] = all(run["checks"].values())
                    runs.append(run)
                    print(f"{workload} announce={'on' if announce else 'off'} run {number + 1}: "
                          + ", ".join(f"{key} {run[key]}" for key in FIGURES) + f", checks {run['checks']}",
                          flush=True)
                case = {"workload": workload, "announce": announce, "runs": runs,
                        "ok": f"{sum(run['ok'] for run in runs)}/{len(runs)}",
                        "medians": {key: median(runs, key) for key in FIGURES}}
                cases.append(case)
    finally:
        guest["tap"].stop()
        lab.remove(guest["name"])
    summary = table(cases)
    elapsed = time.monotonic() - began
    print(f"\nmedians of {options.runs} live moves per case, {elapsed / 60:.1f} min in all\n\n{summary}")
    with open(options.json, "w", encoding="utf-8") as handle:
        json.dump({"runs_per_case": options.runs, "boot_s": boots, "elapsed_s": round(elapsed), "cases": cases,
                   "table": summary}, handle, indent=2)
    print(f"\nsaved {options.json}")
    return 0 if all(case["ok"] == f"{options.runs}/{options.runs}" for case in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
