#!/usr/bin/env python
"""The benchmark matrix of docs/benchmarks.md in the two-host lab: policies x workloads x fills x links, 3 runs
each.

Every run moves the test guest with the documented migrate playbook, or libvirt's `virsh migrate` for the libvirt
policies (benchmarks/libvirt.py), and is checked (heartbeats continue, no page-check failure, disk ring intact, rest
of the disk identical). Every policy runs on the guest's `words` fill; the policies that compress pages or send only
their changes, and their libvirt baselines, also on its `random` fill. One VM per tool, workload, fill and link is
moved back and forth by each policy in turn. Prints a table of medians, one of our figures over libvirt's and one of
predicted against actual times, and saves every figure as JSON. Run through benchmarks/run.sh, which prepares the
machine; --smoke runs two cases once (ours and libvirt's).
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
import libvirt  # noqa: E402  benchmarks/libvirt.py, the peer

# Each run may take this long; a move not finished by then counts as not completed. QEMU's defaults get less:
# where they cannot converge they never finish, and waiting longer would only stretch the benchmark.
RUN_TIMEOUT_S = 120
DEFAULTS_TIMEOUT_S = 40
POLICIES = {
    "qemu-defaults": {"livemig_convergence": "defaults", "livemig_migration_timeout": DEFAULTS_TIMEOUT_S},
    "auto": {"livemig_convergence": "auto"},
    "auto-postcopy": {"livemig_convergence": "auto", "livemig_allow_postcopy": True},
    "auto-multifd": {"livemig_convergence": "auto", "livemig_multifd_channels": 4},
    "auto-multifd-zstd": {"livemig_convergence": "auto", "livemig_multifd_channels": 4,
                          "livemig_multifd_compression": "zstd"},
    "auto-xbzrle": {"livemig_convergence": "auto", "livemig_xbzrle_cache_mb": 256},
    "postcopy-early": {"livemig_convergence": "postcopy-early", "livemig_allow_postcopy": True},
    "stateful": {"livemig_method": "stateful"},
    # The same in cleartext, against which TLS's cost is measured.
    "auto-tcp": {"livemig_convergence": "auto", "livemig_transport": "tcp"},
    "stateful-tcp": {"livemig_method": "stateful", "livemig_transport": "tcp"},
    # libvirt's own moves of the same guest: flags of `virsh migrate`, not playbook variables. In cleartext, and over
    # TLS (migration stream and NBD mirror, the certificates of our moves: lab/libvirt.sh) like our default.
    "libvirt": {"virsh": []},
    "libvirt-autoconverge": {"virsh": ["--auto-converge"]},
    "libvirt-postcopy": {"virsh": ["--postcopy", "--postcopy-after-precopy"]},
    "libvirt-tls": {"virsh": ["--tls"]},
    "libvirt-autoconverge-tls": {"virsh": ["--auto-converge", "--tls"]},
    "libvirt-postcopy-tls": {"virsh": ["--postcopy", "--postcopy-after-precopy", "--tls"]},
}
DEFAULT_POLICIES = ("qemu-defaults", "auto", "auto-postcopy", "auto-multifd", "auto-multifd-zstd", "auto-xbzrle",
                    "postcopy-early", "stateful", "libvirt", "libvirt-autoconverge", "libvirt-postcopy", "libvirt-tls",
                    "libvirt-autoconverge-tls", "libvirt-postcopy-tls")
# The libvirt move each of ours is compared with, the nearest in what it allows; over the policy's own transport
# (baseline_candidates).
BASELINES = {"qemu-defaults": "libvirt", "stateful": "libvirt", "stateful-tcp": "libvirt",
             "auto": "libvirt-autoconverge", "auto-multifd": "libvirt-autoconverge", "auto-tcp": "libvirt-autoconverge",
             "auto-multifd-zstd": "libvirt-autoconverge", "auto-xbzrle": "libvirt-autoconverge",
             "auto-postcopy": "libvirt-postcopy", "postcopy-early": "libvirt-postcopy"}
RATIOS = ("guest_visible_downtime_ms", "guest_disturbance_ms", "migration_time_ms", "total_time_s")
WORKLOADS = ("idle", "light", "heavy")
# What the guest writes into its pages (lm.fill, tests/guest/README.md): two words a page, which compression and
# XBZRLE shrink far more than real memory allows, or pseudo-random bytes, which they cannot shrink.
FILLS = ("words", "random")
LINKS = {"unlimited": None, "1gbit": "1gbit"}
MEDIANS = ("guest_visible_downtime_ms", "guest_disturbance_ms", "qemu_downtime_ms", "stop_to_resume_ms",
           "total_time_s", "migration_time_ms", "ram_bytes", "disk_bytes", "passes", "bound_s", "total_to_bound",
           "migration_to_bound", "predicted_total_s", "actual_total_s", "prediction_error")


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


def is_libvirt(policy: str) -> bool:
    return "virsh" in POLICIES[policy]


def transport(policy: str) -> str:
    """`tls` or `tcp`: what the policy's streams run over (ours: `livemig_transport`, TLS by default)."""
    settings = POLICIES[policy]
    if is_libvirt(policy):
        return "tls" if "--tls" in settings["virsh"] else "tcp"
    return settings.get("livemig_transport", "tls")


def baseline_candidates(policy: str) -> list[str]:
    """The libvirt policies one of ours may be compared with, best first: its baseline over the same transport, else
    plain libvirt over the same transport. Never one over the other transport: TLS alone can double a move's time."""
    suffix = "-tls" if transport(policy) == "tls" else ""
    return list(dict.fromkeys([BASELINES[policy] + suffix, "libvirt" + suffix]))


def shrinks_pages(policy: str) -> bool:
    """Whether the policy compresses pages or sends only their changes (XBZRLE): its figures depend on the fill."""
    settings = POLICIES[policy]
    compresses = settings.get("livemig_multifd_compression", "none") != "none"
    return compresses or bool(settings.get("livemig_xbzrle_cache_mb"))


def case_policies(policies: list[str], fill: str) -> list[str]:
    """The policies, of those asked for, that run on the guest's `fill`: every one on words; on random, those whose
    figures depend on the fill and the libvirt baselines they are compared with, so that ratios compare like with
    like."""
    if fill == "words":
        return list(policies)
    ours = [policy for policy in policies if not is_libvirt(policy) and shrinks_pages(policy)]
    # The baseline each is compared with (ratios): the first of its candidates asked for.
    theirs = {next((name for name in baseline_candidates(policy) if name in policies), None) for policy in ours}
    return [policy for policy in policies if policy in ours or policy in theirs]


def run_case(lab: Lab, name: str, workload: str, fill: str, order: list[str], rate: float
             ) -> list[tuple[str, dict]]:
    """Every move of `order` (policies, interleaved) on one workload, fill and link. Our VM and libvirt's, from one
    spec, are each booted once and moved back and forth; while one tool moves its VM the other's is paused, so that
    one guest at a time uses the CPU."""
    lab.define_vm(name, workload, fill=fill)
    peer = libvirt.LibvirtVM(f"lv-{name}", dict(lab.vms[name]), workload) if any(map(is_libvirt, order)) else None
    pending = list(order)
    results = []

    def peer_moves() -> None:
        while pending and is_libvirt(pending[0]):
            policy = pending.pop(0)
            results.append((policy, {**peer.move(POLICIES[policy]["virsh"], RUN_TIMEOUT_S), "fill": fill}))

    def between(host: str) -> None:
        """Before each of our moves: the libvirt moves due first, with our VM paused."""
        if pending and is_libvirt(pending[0]):
            lab.qmp(host, name, "stop")
            peer.resume()
            peer_moves()
            peer.suspend()
            lab.qmp(host, name, "cont")
            time.sleep(1)  # our guest runs again before its move is measured
        pending.pop(0)

    plan = [(policy, {"livemig_migration_timeout": RUN_TIMEOUT_S, **POLICIES[policy]})
            for policy in order if not is_libvirt(policy)]
    try:
        if peer:
            peer.boot("hv1")
            peer.suspend()
        if plan:
            results += moves(lab, name, workload, plan, rate, between=between, fill=fill)
        if pending:
            peer.resume()
            peer_moves()
    finally:
        if peer:
            peer.remove()
    return results


def medians(runs: list[dict]) -> dict:
    done = [run for run in runs if run["completed"]]
    figures = {key: statistics.median(run[key] for run in done if run.get(key) is not None)
               for key in MEDIANS if any(run.get(key) is not None for run in done)}
    figures["completed"] = f"{len(done)}/{len(runs)}"
    figures["checks_pass"] = all(all(run["checks"].values()) for run in runs)
    figures["postcopy"] = sum(bool(run.get("postcopy")) for run in runs)
    return figures


def table(cases: list[dict]) -> str:
    columns = ("policy", "workload", "fill", "link", "completed", "guest_visible_downtime_ms", "qemu_downtime_ms",
               "stop_to_resume_ms", "guest_disturbance_ms", "total_time_s", "migration_time_ms", "ram_bytes",
               "disk_bytes", "passes", "postcopy", "total_to_bound", "migration_to_bound", "checks_pass")
    heads = ("policy", "workload", "fill", "link", "done", "guest ms", "QEMU ms", "STOP-RESUME ms", "disturb ms",
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


def ratios(cases: list[dict]) -> list[dict]:
    """Per case (workload x fill x link), each of our policies' medians over its libvirt baseline's: the first of
    baseline_candidates that ran on the same case; no row when none did."""
    found = {(case["policy"], case["workload"], case["fill"], case["link"]): case for case in cases}
    rows = []
    for case in cases:
        if is_libvirt(case["policy"]):
            continue
        where = (case["workload"], case["fill"], case["link"])
        compared = next((found[(name, *where)] for name in baseline_candidates(case["policy"])
                         if (name, *where) in found), None)
        if compared is None:
            continue
        row = {"policy": case["policy"], "baseline": compared["policy"], "workload": case["workload"],
               "fill": case["fill"], "link": case["link"]}
        for key in RATIOS:
            ours, theirs = case["medians"].get(key), compared["medians"].get(key)
            row[key] = round(ours / theirs, 2) if ours is not None and theirs else None
        rows.append(row)
    return rows


def ratio_table(rows: list[dict]) -> str:
    heads = ("policy", "libvirt baseline", "workload", "fill", "link", "guest freeze",
             "disturbance outside switchover", "migration time", "total time")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        figures = ["-" if row[key] is None else f"{row[key]:g}" for key in RATIOS]
        where = [row["policy"], row["baseline"], row["workload"], row["fill"], row["link"]]
        lines.append("| " + " | ".join(where + figures) + " |")
    return "\n".join(lines)


def predictions(cases: list[dict]) -> list[dict]:
    """Per case of ours whose moves were predicted: the strategies predicted, the medians of the predicted and the
    actual time and of the relative error (predicted / actual - 1)."""
    rows = []
    for case in cases:
        figures = case["medians"]
        if figures.get("predicted_total_s") is None:
            continue
        strategies = sorted({run["strategy"] for run in case["runs"] if run.get("strategy")})
        rows.append({"policy": case["policy"], "workload": case["workload"], "fill": case["fill"],
                     "link": case["link"], "strategy": "/".join(strategies),
                     **{key: figures.get(key) for key in ("predicted_total_s", "actual_total_s", "prediction_error")}})
    return rows


def prediction_table(rows: list[dict]) -> str:
    heads = ("policy", "workload", "fill", "link", "strategy", "predicted s", "actual s", "error %")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        actual, error = row["actual_total_s"], row["prediction_error"]
        figures = [f"{row['predicted_total_s']:.1f}", "-" if actual is None else f"{actual:.1f}",
                   "-" if error is None else f"{error * 100:+.0f}"]
        where = [row["policy"], row["workload"], row["fill"], row["link"], row["strategy"] or "-"]
        lines.append("| " + " | ".join(where + figures) + " |")
    return "\n".join(lines)


def measure_case(lab: Lab, workload: str, fill: str, link_name: str, policies: list[str], runs: int,
                 rate: float) -> list[dict]:
    """One VM per tool on one workload, fill and link, moved back and forth by every policy in turn (boots are
    slow); a case, with its runs and medians, per policy."""
    print(f"== {workload} workload, {fill} fill, {link_name} link ({rate * 8 / 1e9:.2f} Gbit/s measured): "
          f"{', '.join(policies)}, {runs} moves each", flush=True)
    # Interleaved (every policy once, then again), so that a slow spell of the machine hits them alike.
    order = [policy for _run in range(runs) for policy in policies]
    done = run_case(lab, f"bench-{workload}-{fill}-{link_name}", workload, fill, order, rate)
    cases = []
    for policy in policies:
        moved = [run for label, run in done if label == policy]
        case = {"policy": policy, "workload": workload, "fill": fill, "link": link_name, "link_bytes_per_s": rate,
                "runs": moved, "medians": medians(moved)}
        case["completed"] = case["medians"]["completed"]
        cases.append(case)
        print(table([case]).splitlines()[-1], flush=True)
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="two cases (auto and libvirt, both over TLS, light, unlimited link), one run each")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(DEFAULT_POLICIES))
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--links", nargs="+", choices=LINKS, default=list(LINKS))
    parser.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results.json"))
    options = parser.parse_args()
    if options.smoke:
        options.policies, options.workloads, options.links = ["auto", "libvirt-tls"], ["light"], ["unlimited"]
        options.runs = 1

    began = time.monotonic()  # the benchmark's own runtime counts the lab's set-up too
    lab_up()
    if any(map(is_libvirt, options.policies)):
        libvirt.libvirt_up()
    lab = Lab(build_guest(), tempfile.mkdtemp(prefix="livemig-bench-"))
    cases = []
    for link_name in options.links:
        if LINKS[link_name]:
            link("hv2", "limit", LINKS[link_name])
        try:
            rate = link_rate()
            for workload in options.workloads:
                for fill in FILLS:
                    policies = case_policies(options.policies, fill)
                    if policies:
                        cases += measure_case(lab, workload, fill, link_name, policies, options.runs, rate)
        finally:
            if LINKS[link_name]:
                link("hv2", "unlimit")
    summary = table(cases)
    print(f"\nmedians of {options.runs} run(s) per case\n\n{summary}")
    compared = ratios(cases)
    against = ratio_table(compared)
    if compared:
        print(f"\nours / libvirt's over the same transport (medians; below 1: ours is smaller)\n\n{against}")
    predicted = predictions(cases)
    foreseen = prediction_table(predicted)
    if predicted:
        print(f"\npredicted against actual (medians; error = predicted / actual - 1)\n\n{foreseen}")
    elapsed = time.monotonic() - began
    print(f"\nthe benchmark ran {elapsed:.0f} s ({elapsed / 60:.1f} min), the lab's set-up included")
    with open(options.json, "w", encoding="utf-8") as handle:
        json.dump({"runs_per_case": options.runs, "run_timeout_s": RUN_TIMEOUT_S,
                   "qemu_defaults_timeout_s": DEFAULTS_TIMEOUT_S, "elapsed_s": round(elapsed),
                   "cases": cases, "table": summary,
                   "baselines": {policy: baseline_candidates(policy) for policy in BASELINES}, "ratios": compared,
                   "ratio_table": against, "predictions": predicted, "prediction_table": foreseen}, handle, indent=2)
    print(f"\nsaved {options.json}")
    return 0 if all(case["medians"]["checks_pass"] for case in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
