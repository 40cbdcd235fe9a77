# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block mirror of a source disk to an NBD export on the target.

Private to the livemig.qemu collection. Job and node names derive from the
disk's node name, so every module finds the same job without extra state.
"""
from __future__ import annotations

import time
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._paths import mirror_job, mirror_target, node_name
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession, QMPTimeout

JOB_END_EVENTS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")


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
    jobs = [job for job in session.execute("query-block-jobs") if job["device"].startswith(mirror_job(""))]
    return {"t": time.time(), "disk_remaining": sum(max(job.get("len", 0) - job.get("offset", 0), 0) for job in jobs),
            "disk_total": sum(job.get("len", 0) for job in jobs)}


def start_mirror(session: QMPSession, node: str, host: str, port: int, export: str,
                 copy_mode: str = "background", speed: int = 0, tls: _tlsqemu.Client | None = None) -> None:
    """Attach the target's NBD export as a node (over TLS when `tls` says so) and mirror `node` into it
    (sync=full)."""
    target = mirror_target(node)
    if not node_exists(session, target):
        if tls:
            _tlsqemu.add_client(session, tls)
        session.execute("blockdev-add", {
            "driver": "nbd", "node-name": target, "export": export,
            "server": {"type": "inet", "host": host, "port": str(port)}, **_tlsqemu.nbd_client_options(tls),
        }, timeout=30)
    arguments = {"job-id": mirror_job(node), "device": node, "target": target, "sync": "full",
                 "copy-mode": copy_mode, "auto-dismiss": True}
    if speed:
        arguments["speed"] = speed
    session.execute("blockdev-mirror", arguments)


def wait_ready(session: QMPSession, node: str, deadline: float, on_progress: Any = None, interval: float = 1.0,
               stall_timeout: float = float("inf")) -> dict[str, Any]:
    """Wait for BLOCK_JOB_READY of the mirror of `node`; fail if the job ends or errors first, or copies nothing for
    `stall_timeout` seconds (an NBD target that dropped off the network never errors by itself)."""
    job = mirror_job(node)
    with session.subscribe(("BLOCK_JOB_READY", "BLOCK_JOB_ERROR", *JOB_END_EVENTS)) as events:
        current = find_job(session, job)
        moved = (time.monotonic(), current.get("offset") if current else None)
        while True:
            if current is None:
                raise QMPError(f"the mirror job {job} ended before it was ready", "blockdev-mirror")
            if current.get("ready"):
                return progress(current)
            if on_progress:
                on_progress(progress(current))
            now = time.monotonic()
            if now > deadline:
                raise QMPTimeout(f"the mirror of {node} was not ready in time: {progress(current)}")
            if current.get("offset") != moved[1]:
                moved = (now, current.get("offset"))
            elif now - moved[0] >= stall_timeout:
                raise QMPError(f"the mirror of {node} copied nothing for {stall_timeout:g}s (is the target "
                               f"reachable?): {progress(current)}", "blockdev-mirror")
            event = events.get(min(interval, max(deadline - time.monotonic(), 0.01)))
            if event and event["data"].get("device") == job and event["event"] != "BLOCK_JOB_READY":
                detail = event["data"].get("error") or event["data"].get("action") or event["event"]
                raise QMPError(f"the mirror of {node} failed: {detail}", "blockdev-mirror")
            current = find_job(session, job)


def finish_gracefully(session: QMPSession, nodes: list[str], deadline: float) -> dict[str, int]:
    """Cancel READY mirrors so that each completes with a consistent copy; returns bytes copied per node."""
    jobs = {mirror_job(node): node for node in nodes}
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


YANK_AFTER = 2.0  # seconds a force-cancelled mirror may take before its NBD connection is broken


def abort(session: QMPSession, node: str, timeout: float = 30.0) -> bool:
    """Force-cancel the mirror of `node` (if any) and detach its NBD node; True if anything was there.

    A mirror whose target dropped off the network would only stop at its NBD I/O timeout (and a write-blocking one
    holds the guest's writes meanwhile): when the cancel does not end it at once, its NBD connection is broken."""
    changed = False
    job = mirror_job(node)
    with session.subscribe(JOB_END_EVENTS) as events:
        if find_job(session, job) is not None:
            changed = True
            try:
                session.execute("block-job-cancel", {"device": job, "force": True})
            except QMPError:
                if find_job(session, job) is not None:
                    raise
            started, yanked = time.monotonic(), False
            while find_job(session, job) is not None:
                now = time.monotonic()
                if not yanked and now - started > YANK_AFTER:
                    yanked = _yank(session, mirror_target(node))
                if now - started > timeout:
                    raise QMPTimeout(f"the mirror of {node} did not stop within {timeout:.0f}s", "block-job-cancel")
                events.get(0.2)
    if node_exists(session, mirror_target(node)):
        # blockdev-del drains the node in QEMU's main loop: requests stuck on a target that stopped answering
        # would hold the whole QEMU (guest and monitor) until NBD gives up. The connection is thrown away anyway.
        _yank(session, mirror_target(node))
        detach(session, mirror_target(node))
        changed = True
    return changed


def _yank(session: QMPSession, node: str) -> bool:
    try:
        session.execute("yank", {"instances": [{"type": "block-node", "node-name": node}]})
    except QMPError:
        pass  # not a yank instance (any more): nothing to break
    return True


DETACH_TIMEOUT = 5.0


def detach(session: QMPSession, node: str, timeout: float = DETACH_TIMEOUT) -> None:
    """blockdev-del of a mirror's NBD node. A job that has just ended can hold its target for a moment after it
    has left query-block-jobs, so a refusal is retried until the node is gone or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            session.execute("blockdev-del", {"node-name": node})
            return
        except QMPTimeout:
            raise
        except QMPError:
            if not node_exists(session, node):
                return
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- the module --------------------------------------------------------------------------------

def run(task: Any) -> dict[str, Any]:
    """qemu_block_mirror: start, wait for READY or abort the mirror of one disk, on the VM's job monitor
    (waiting for READY can take long: the main monitor stays free)."""
    params, disk = task.params, task.params["disk"]
    node = node_name(disk)
    result: dict[str, Any] = {"changed": False}
    with task.qmp(task.paths.job_qmp) as session:
        job = find_job(session, mirror_job(node))
        if params["state"] == "absent":
            if job or node_exists(session, mirror_target(node)):
                result["changed"] = True
                if not task.check_mode:
                    abort(session, node)
            return result
        if job is None:
            result["changed"] = True
            _start(task, session, node)
            if task.check_mode:
                return result
        if params["state"] == "ready" and not task.check_mode:
            history: list[dict[str, Any]] = []
            result["history"] = history
            try:
                result["progress"] = wait_ready(session, node, time.monotonic() + params["timeout"],
                                                on_progress=lambda _job: history.append(all_remaining(session)),
                                                stall_timeout=params["stall_timeout"])
            except QMPError as exc:
                raise LivemigError(f"disk mirror phase: disk {disk}: {exc}", details=result) from exc
        elif job := find_job(session, mirror_job(node)):
            result["progress"] = progress(job)
    return result


def _start(task: Any, session: QMPSession, node: str) -> None:
    params, disk = task.params, task.params["disk"]
    missing = [key for key in ("nbd_host", "nbd_port", "export") if not params[key]]
    if missing:
        raise LivemigError(f"to start the mirror of disk {disk}, give {', '.join(missing)}")
    tls = _tlsqemu.client(params)
    if not node_exists(session, node):
        raise LivemigError(f"VM {task.paths.vm} has no disk {disk} (no block node {node})")
    if task.check_mode:
        return
    try:
        start_mirror(session, node, params["nbd_host"], params["nbd_port"], params["export"], params["copy_mode"],
                     params["speed"], tls)
    except QMPError as exc:
        abort(session, node)
        raise LivemigError(f"cannot start the mirror of disk {disk} to {params['nbd_host']}:{params['nbd_port']}: "
                           f"{exc}") from exc
