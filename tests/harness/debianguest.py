"""The Debian test guest in the lab: boot it, reach it over SSH from the client namespace, move it while a client
talks to it and measure what that client saw. Shared by the integration tests and benchmarks/network.py."""
from __future__ import annotations

import os
import subprocess
import time

from lab import Lab, guestcheck, lab_path
from netclient import CLIENT_NS, Echo, Ping, SSHLoop

BOOT_TIMEOUT = 600  # systemd under TCG on two busy cores
BOOTED = r"^LMBOOTED \d+\.\d+\.\d+\.\d+"
RING_BLOCKS = 4096  # the workload's default ring on /dev/vdb


def guest_ssh(guest: dict, command: str) -> str:
    """Run a command in the guest as root, from the client namespace; fails on a non-zero exit."""
    done = subprocess.run(["ip", "netns", "exec", CLIENT_NS, "ssh", "-i", guest["key"], "-o", "BatchMode=yes",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                           "LogLevel=ERROR", "-o", "ConnectTimeout=20", f"root@{guest['ip']}", command],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"ssh {command!r} exited {done.returncode}: {done.stdout}{done.stderr}")
    return done.stdout


def boot(lab: Lab, name: str, debian: dict, host: str = "hv1", firmware: str = "bios") -> dict:
    """Define and start the Debian guest; once it says it booted: {name, ip, key, host, tap, boot_s}."""
    lab.define_debian_vm(name, debian["image"], firmware=firmware)
    started = time.monotonic()
    lab.start_debian(name, debian["image"], host)
    tap = lab.tap(name)
    line = tap.wait_for(BOOTED, label=host, timeout=BOOT_TIMEOUT)
    return {"name": name, "ip": line[2].split()[1], "key": debian["key"], "host": host, "tap": tap,
            "boot_s": round(line[0] - started, 1)}


def other(host: str) -> str:
    return "hv2" if host == "hv1" else "hv1"


def move(lab: Lab, guest: dict, **extra) -> dict:
    """Migrate the guest to the other host with the documented playbook; returns the report."""
    source, target = guest["host"], other(guest["host"])
    result = lab.migrate(guest["name"], source, target, **extra)
    if result.failed:
        raise AssertionError(result.output)
    guest["host"] = target
    if lab.pid(source, guest["name"]) is not None:
        raise AssertionError("the source QEMU is still there")
    return lab.report(guest["name"])


def move_with_clients(lab: Lab, guest: dict, workload: str, **extra) -> dict:
    """A live move with the workload running and a TCP echo client, a ping and an SSH loop on the client side.

    Returns the client's, the guest's and QEMU's figures, and the checks (connection kept, session kept, memory and
    disk ring intact)."""
    tap = guest["tap"]
    guest_ssh(guest, f"systemctl start lm-workload@{workload}")
    try:
        since = time.monotonic()
        tap.wait_for(r"^LMREADY", label=guest["host"], timeout=120, since=since)
        tap.wait_for(r"^PC \d+ OK", label=guest["host"], timeout=120, since=since)
        echo = Echo(guest["ip"], os.path.join(lab.workdir, f"echo-{guest['name']}.json"))
        ping, session = Ping(guest["ip"]), SSHLoop(guest["ip"], guest["key"])
        time.sleep(2)
        report = move(lab, guest, **extra)
        moved = time.monotonic()
        tap.wait_for(r"^PC \d+ OK", label=guest["host"], timeout=120, since=moved)
        time.sleep(2)
        connection, pings, ssh = echo.result(), ping.result(), session.result()
    finally:
        guest_ssh(guest, f"systemctl stop lm-workload@{workload}")
    summary = guestcheck.analyze([line for line in tap.snapshot() if line[0] >= since])
    ring = guestcheck.check_ring(lab_path(guest["host"], "images", f"{guest['name']}-ring.raw"), RING_BLOCKS,
                                 min_seq=summary["last_ring_seq"], fmt="raw", force_share=True)
    return {
        "client_outage_ms": _ms(connection["max_gap_s"]), "ping_gap_ms": _ms(pings["max_gap_s"]),
        "ssh_gap_ms": _ms(ssh["max_gap_s"]), "guest_visible_downtime_ms": _ms(summary["max_gap_s"]),
        "qemu_downtime_ms": report["statistics"]["downtime_ms"], "frozen_ms": report["frozen_ms"],
        "total_s": round(report["finished"] - report["started"], 1),
        "agent_answered": (report.get("guest_agent") or {}).get("answered"),
        "agent_answer_ms": (report.get("guest_agent") or {}).get("answer_ms"),
        "announce": report.get("announce"),
        "checks": {"connection_kept": not connection["dropped"], "ssh_kept": ssh["survived"] and ssh["in_order"],
                   "ssh_went_on": bool(session.lines) and session.lines[-1][0] > moved,
                   "memory": summary["pagecheck_failures"] == [] and summary["hb_seq_errors"] == 0,
                   "ring": ring["ok"]},
        "connection_error": connection["error"], "ring_problems": ring["problems"],
    }


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)
