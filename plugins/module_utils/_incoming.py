# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qemu_migrate_incoming module: the target listens for a migration, lets the VM run once it has arrived, or
ends a target that never ran it.

Private to the livemig.qemu collection. The listener also picks the port where a paused post-copy is resumed
(the volatile key `recovery_uri` of this host's record); the watcher issues `migrate-recover` there whenever the
post-copy pauses, and follows a post-copy to its end.
"""
from __future__ import annotations

import time
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _nbdexport, _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import (
    POSTCOPY, check_request, free_port, host_port, migration_status, set_capabilities)
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths, file_node
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession, QMPTimeout, event_time
from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record, mark_ran, ran_here, updating
from ansible_collections.livemig.qemu.plugins.module_utils._vmhost import kill_qemu, running_pid

RECOVER_RETRY = 1.0  # seconds between two migrate-recover attempts


def run(task: Any) -> dict[str, Any]:
    if task.params["state"] == "aborted":
        return aborted(task)
    if task.params["state"] == "listening":
        with task.qmp(task.paths.qmp) as session:
            return listen(task, session)
    with task.qmp(task.paths.job_qmp) as session:
        return wait_completed(task, session)


def listening_uri(info: dict[str, Any]) -> str | None:
    for address in info.get("socket-address") or []:
        if address.get("type") == "inet":
            return f"tcp:{host_port(address['host'], address['port'])}"
    return None


def listen(task: Any, session: QMPSession) -> dict[str, Any]:
    params, vm = task.params, task.paths.vm
    status = session.execute("query-status")["status"]
    if status != "inmigrate":
        raise LivemigError(f"VM {vm}: QEMU is {status}, not waiting for an incoming migration")
    uri = listening_uri(session.execute("query-migrate"))
    if uri:
        record = load_record(task.paths.record, vm)
        return {"changed": False, "uri": uri, "port": int(uri.rsplit(":", 1)[1]), "status": status,
                "recovery_uri": record.volatile.get("recovery_uri") if record else None}
    try:
        parameters = check_request(session, params["capabilities"], params["parameters"],
                                   _tlsqemu.MANAGED_PARAMETERS)
        tls = _tlsqemu.server(params)
    except LivemigError as exc:
        raise exc.about(f"VM {vm}") from exc
    if task.check_mode:
        return {"changed": True, "status": status}
    capabilities = sorted({"events", *params["capabilities"]})
    parameters.update(_tlsqemu.incoming_parameters(tls))
    try:
        set_capabilities(session, capabilities)
        if tls:
            _tlsqemu.add_server(session, tls)
        session.execute("migrate-set-parameters", parameters)
    except QMPError as exc:
        credentials = f"the TLS credentials of {tls.dir}, " if tls else ""
        raise LivemigError(f"VM {vm}: QEMU refused the capabilities {', '.join(capabilities)}, {credentials}or the "
                           f"parameters {parameters}: {exc}") from exc
    session.execute("migrate-incoming", {"uri": f"tcp:{host_port(params['address'], params['port'])}"})
    uri = listening_uri(session.execute("query-migrate"))
    if not uri:
        raise LivemigError(f"VM {vm}: QEMU accepted migrate-incoming but reports no listening address")
    recovery_uri = f"tcp:{host_port(params['address'], free_port(params['address']))}"
    with updating(task.paths.record, vm) as record:
        record.volatile["recovery_uri"] = recovery_uri
    return {"changed": True, "uri": uri, "port": int(uri.rsplit(":", 1)[1]), "status": status,
            "recovery_uri": recovery_uri}


def disk_allocated(session: QMPSession) -> dict[str, int]:
    """Bytes allocated by each disk's image file here, by disk name (its file node is file-<disk>)."""
    return {node["node-name"][len(file_node("")):]: node["image"].get("actual-size", 0)
            for node in session.execute("query-named-block-nodes", {"flat": True})
            if node.get("node-name", "").startswith(file_node("")) and "image" in node}


TAKE_OVER = ("completed", "postcopy-active")  # the incoming status at which the paused target may be let run
NEVER_RAN = ("inmigrate", "paused")  # a target QEMU without a ran marker in these states has not run the guest


def let_run(paths: VMPaths, session: QMPSession) -> None:
    """The target QEMU waits paused (-S) once the migration has delivered the VM: mark, durably, that the VM runs
    here, close the writable NBD exports (nothing may write into the disks from outside any more), then let it run.
    During post-copy `cont` only lets QEMU start the VM as soon as it can."""
    mark_ran(paths.record, paths.vm, forget=("nbd",))
    _nbdexport.close(session)
    session.execute("cont")


def wait_completed(task: Any, session: QMPSession) -> dict[str, Any]:
    """Let the VM run once it is here; in post-copy go on until all its memory has arrived, recovering each pause."""
    paths, params = task.paths, task.params
    deadline = time.monotonic() + params["timeout"]
    with session.subscribe(("RESUME", "MIGRATION")) as events:
        status, incoming = session.execute("query-status")["status"], migration_status(session)
        resumed = status == "running"
        if resumed and incoming not in POSTCOPY:
            return finished(session, False, None)
        started = resumed
        if status == "paused" and incoming in TAKE_OVER:  # delivered while nobody watched
            let_run(paths, session)
            started = True
        if incoming == "postcopy-paused":
            recover(paths, session, params["recovery_timeout"])
        resume_time = None
        while True:
            try:
                event = events.wait(None, deadline, "the incoming migration to complete")
            except QMPTimeout as exc:
                raise LivemigError(f"VM {paths.vm}: the incoming migration did not complete in time",
                                   details={"status": session.execute("query-status")["status"]}) from exc
            if event["event"] == "RESUME":
                resumed, resume_time = True, event_time(event)
                if migration_status(session) not in POSTCOPY:
                    return finished(session, True, resume_time)
                continue
            incoming = event["data"].get("status")
            if incoming in TAKE_OVER and not started:
                let_run(paths, session)
                started = True
            elif incoming == "completed" and resumed:
                return finished(session, True, resume_time)
            elif incoming == "postcopy-paused" and migration_status(session) == "postcopy-paused":
                recover(paths, session, params["recovery_timeout"])
            elif incoming == "failed":
                raise LivemigError(f"VM {paths.vm}: the incoming migration failed",
                                   details={"status": session.execute("query-status")["status"]})


def finished(session: QMPSession, changed: bool, resume_time: float | None) -> dict[str, Any]:
    """The watcher's result; the vCPUs' waits for pages when post-copy ran with postcopy-blocktime (QEMU shows them
    in the target's query-migrate once the migration has completed)."""
    info = session.execute("query-migrate")
    return {"changed": changed, "status": "running", "resume_time": resume_time,
            "disk_allocated": disk_allocated(session), "postcopy_blocktime_ms": info.get("postcopy-blocktime"),
            "postcopy_vcpu_blocktime_ms": info.get("postcopy-vcpu-blocktime")}


def recover(paths: VMPaths, session: QMPSession, timeout: float) -> None:
    """The post-copy paused: listen on this host's recovery URI for the source to resume it. QEMU refuses while the
    port is still taken or the broken stream is not yet torn down: retried once a second for `timeout` seconds."""
    record = load_record(paths.record, paths.vm)
    uri = record.volatile.get("recovery_uri") if record else None
    if not uri:
        raise LivemigError(f"VM {paths.vm}: the incoming post-copy paused and this host's record names no recovery "
                           "URI (listen with this version of qemu_migrate_incoming)", phase="post-copy",
                           source_running=False, target_may_have_run=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            session.execute("migrate-recover", {"uri": uri})
            return
        except QMPError as exc:
            if migration_status(session) != "postcopy-paused":  # the source came back by itself or it is over
                return
            if time.monotonic() > deadline:
                raise LivemigError(f"VM {paths.vm}: the post-copy paused and migrate-recover on {uri} was refused for "
                                   f"{timeout:g}s: {exc}. The VM is paused here in postcopy-paused, part of its memory "
                                   "still on the source: keep both QEMUs; retry with livemig.qemu.qemu_qmp "
                                   f"command=migrate-recover arguments={{\"uri\": \"{uri}\"}} here, then migrate "
                                   "with resume=true on the source", phase="post-copy", source_running=False,
                                   target_may_have_run=True) from exc
            time.sleep(RECOVER_RETRY)


def _statuses(paths: VMPaths, timeout: float) -> tuple[str | None, str | None]:
    """(run state, incoming migration status) of this host's QEMU."""
    with QMPSession(paths.qmp, connect_timeout=timeout) as session:
        return session.execute("query-status")["status"], session.execute("query-migrate").get("status")


def aborted(task: Any) -> dict[str, Any]:
    """End this host's target QEMU of the move unless the VM ran here; say whether it did.

    A target QEMU that never ran the guest (no ran marker, waiting in -incoming or paused by -S) is killed; the
    marker is read again once it is gone, since its resume watcher may have let it run just before. A VM that ran
    here is left alone, and when its QEMU is gone this host takes ownership: its disks are the newest.
    """
    paths, migration_id = task.paths, task.params["migration_id"]
    record = load_record(paths.record, paths.vm)
    pid = running_pid(paths)
    status, migrate_status = _statuses(paths, task.params["connect_timeout"]) if pid else (None, None)
    result = {"changed": False, "status": status, "migrate_status": migrate_status, "running": pid is not None}
    if record is not None and record.migration.get("id") not in (None, migration_id) and not record.owner:
        return {**result, "ran": None, "msg": f"the VM's record here belongs to another move "
                                              f"({record.migration.get('id')}): left alone"}
    if not ran_here(record, migration_id) and pid and status not in NEVER_RAN:
        return {**result, "ran": True, "msg": f"QEMU is {status} here without a ran marker: it may have run"}
    if not ran_here(record, migration_id) and pid:
        if task.check_mode:
            return {**result, "changed": True, "ran": False}
        kill_qemu(pid)
        result.update(changed=True, killed=True, running=False, status=None, migrate_status=None)
        record = load_record(paths.record, paths.vm)
    if not ran_here(record, migration_id):
        return {**result, "ran": False}
    if not result["running"] and not record.owner and not task.check_mode:
        with updating(paths.record, paths.vm) as current:
            current.owner, current.handed_over_to = True, None
        result["changed"] = True
        result["took_ownership"] = True
    return {**result, "ran": True}
