# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block mirror of a source disk to an NBD export on the target.

Private to the livemig.qemu collection. Job and node names derive from the
disk's node name, so every module finds the same job without extra state.
"""
from __future__ import annotations

import time
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession, QMPTimeout

JOB_END_EVENTS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")


def job_id(node: str) -> str:
    return f"livemig-mirror-{node}"


def nbd_node(node: str) -> str:
    return f"livemig-nbd-{node}"


def find_job(session: QMPSession, job: str) -> dict[str, Any] | None:
    for item in session.execute("query-block-jobs"):
        if item["device"] == job:
            return item
    return None


def node_exists(session: QMPSession, node: str) -> bool:
    return any(item.get("node-name") == node for item in session.execute("query-named-block-nodes", {"flat": True}))


def progress(job: dict[str, Any]) -> dict[str, Any]:
    total, done = job.get("len", 0), job.get("offset", 0)
    return {"job": job["device"], "status": job.get("status"), "ready": bool(job.get("ready")),
            "offset": done, "len": total, "remaining": max(total - done, 0),
            "percent": round(100.0 * done / total, 1) if total else 100.0}


def all_remaining(session: QMPSession) -> dict[str, Any]:
    """Every livemig mirror on this QEMU together: what is left to copy, now (wall clock)."""
    jobs = [job for job in session.execute("query-block-jobs") if job["device"].startswith(job_id(""))]
    return {"t": time.time(), "disk_remaining": sum(max(job.get("len", 0) - job.get("offset", 0), 0) for job in jobs),
            "disk_total": sum(job.get("len", 0) for job in jobs)}


def start_mirror(session: QMPSession, node: str, host: str, port: int, export: str,
                 copy_mode: str = "background", speed: int = 0) -> None:
    """Attach the target's NBD export as a node and mirror `node` into it (sync=full)."""
    target = nbd_node(node)
    if not node_exists(session, target):
        session.execute("blockdev-add", {
            "driver": "nbd", "node-name": target, "export": export,
            "server": {"type": "inet", "host": host, "port": str(port)},
        }, timeout=30)
    arguments = {"job-id": job_id(node), "device": node, "target": target, "sync": "full",
                 "copy-mode": copy_mode, "auto-dismiss": True}
    if speed:
        arguments["speed"] = speed
    session.execute("blockdev-mirror", arguments)


def wait_ready(session: QMPSession, node: str, deadline: float,
               on_progress: Any = None, interval: float = 1.0) -> dict[str, Any]:
    """Wait for BLOCK_JOB_READY of the mirror of `node`; fail if the job ends or errors first."""
    job = job_id(node)
    with session.subscribe(("BLOCK_JOB_READY", "BLOCK_JOB_ERROR", *JOB_END_EVENTS)) as events:
        current = find_job(session, job)
        while True:
            if current is None:
                raise QMPError(f"the mirror job {job} ended before it was ready", "blockdev-mirror")
            if current.get("ready"):
                return progress(current)
            if on_progress:
                on_progress(progress(current))
            if time.monotonic() > deadline:
                raise QMPTimeout(f"the mirror of {node} was not ready in time: {progress(current)}")
            event = events.get(min(interval, max(deadline - time.monotonic(), 0.01)))
            if event and event["data"].get("device") == job and event["event"] != "BLOCK_JOB_READY":
                detail = event["data"].get("error") or event["data"].get("action") or event["event"]
                raise QMPError(f"the mirror of {node} failed: {detail}", "blockdev-mirror")
            current = find_job(session, job)


def finish_gracefully(session: QMPSession, nodes: list[str], deadline: float) -> dict[str, int]:
    """Cancel READY mirrors so that each completes with a consistent copy; returns bytes copied per node."""
    jobs = {job_id(node): node for node in nodes}
    copied: dict[str, int] = {}
    with session.subscribe(("BLOCK_JOB_ERROR", *JOB_END_EVENTS)) as events:
        for job in jobs:
            session.execute("block-job-cancel", {"device": job})
        pending = set(jobs)
        while pending:
            event = events.wait(lambda e: e["data"].get("device") in pending, deadline,
                                f"mirror completion of {', '.join(sorted(pending))}")
            job = event["data"]["device"]
            if event["event"] != "BLOCK_JOB_COMPLETED" or event["data"].get("error"):
                raise QMPError(f"mirror {job} did not complete: {event['data'].get('error') or event['event']}",
                               "block-job-cancel")
            pending.discard(job)
            copied[jobs[job]] = event["data"].get("offset", 0)
    return copied


def abort(session: QMPSession, node: str, timeout: float = 30.0) -> bool:
    """Force-cancel the mirror of `node` (if any) and detach its NBD node; True if anything was there."""
    changed = False
    job = job_id(node)
    with session.subscribe(JOB_END_EVENTS) as events:
        if find_job(session, job) is not None:
            session.execute("block-job-cancel", {"device": job, "force": True})
            deadline = time.monotonic() + timeout
            while find_job(session, job) is not None:
                events.get(min(0.5, max(deadline - time.monotonic(), 0.01)))
                if time.monotonic() > deadline:
                    raise QMPTimeout(f"the mirror of {node} did not stop within {timeout:.0f}s", "block-job-cancel")
            changed = True
    if node_exists(session, nbd_node(node)):
        session.execute("blockdev-del", {"node-name": nbd_node(node)})
        changed = True
    return changed
