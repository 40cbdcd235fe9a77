# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qemu_migrate_incoming module: the target listens for a migration, or waits until the VM runs on it.

Private to the livemig.qemu collection.
"""
from __future__ import annotations

import time
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import check_request, set_capabilities
from ansible_collections.livemig.qemu.plugins.module_utils._paths import file_node
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession, QMPTimeout, event_time


def run(task: Any) -> dict[str, Any]:
    if task.params["state"] == "listening":
        with task.qmp(task.paths.qmp) as session:
            return listen(task, session)
    with task.qmp(task.paths.job_qmp) as session:
        return wait_completed(task, session)


def listening_uri(info: dict[str, Any]) -> str | None:
    for address in info.get("socket-address") or []:
        if address.get("type") == "inet":
            return f"tcp:{address['host']}:{address['port']}"
    return None


def listen(task: Any, session: QMPSession) -> dict[str, Any]:
    params, vm = task.params, task.paths.vm
    status = session.execute("query-status")["status"]
    if status != "inmigrate":
        raise LivemigError(f"VM {vm}: QEMU is {status}, not waiting for an incoming migration")
    uri = listening_uri(session.execute("query-migrate"))
    if uri:
        return {"changed": False, "uri": uri, "port": int(uri.rsplit(":", 1)[1]), "status": status}
    try:
        parameters = check_request(session, params["capabilities"], params["parameters"])
    except LivemigError as exc:
        raise exc.about(f"VM {vm}") from exc
    if task.check_mode:
        return {"changed": True, "status": status}
    capabilities = sorted({"events", *params["capabilities"]})
    try:
        set_capabilities(session, capabilities)
        if parameters:
            session.execute("migrate-set-parameters", parameters)
    except QMPError as exc:
        raise LivemigError(f"VM {vm}: QEMU refused the capabilities {', '.join(capabilities)} or the "
                           f"parameters {parameters}: {exc}") from exc
    session.execute("migrate-incoming", {"uri": f"tcp:{params['address']}:{params['port']}"})
    uri = listening_uri(session.execute("query-migrate"))
    if not uri:
        raise LivemigError(f"VM {vm}: QEMU accepted migrate-incoming but reports no listening address")
    return {"changed": True, "uri": uri, "port": int(uri.rsplit(":", 1)[1]), "status": status}


def disk_allocated(session: QMPSession) -> dict[str, int]:
    """Bytes allocated by each disk's image file here, by disk name (its file node is file-<disk>)."""
    return {node["node-name"][len(file_node("")):]: node["image"].get("actual-size", 0)
            for node in session.execute("query-named-block-nodes", {"flat": True})
            if node.get("node-name", "").startswith(file_node("")) and "image" in node}


def wait_completed(task: Any, session: QMPSession) -> dict[str, Any]:
    vm = task.paths.vm
    deadline = time.monotonic() + task.params["timeout"]
    with session.subscribe(("RESUME", "MIGRATION")) as events:
        status = session.execute("query-status")["status"]
        if status == "running":
            return {"changed": False, "status": status, "resume_time": None, "disk_allocated": disk_allocated(session)}
        while True:
            try:
                event = events.wait(None, deadline, "the incoming migration to complete")
            except QMPTimeout as exc:
                raise LivemigError(f"VM {vm}: the incoming migration did not complete in time",
                                   details={"status": session.execute("query-status")["status"]}) from exc
            if event["event"] == "RESUME":
                return {"changed": False, "status": "running", "resume_time": event_time(event),
                        "disk_allocated": disk_allocated(session)}
            if event["data"].get("status") in ("failed", "postcopy-paused"):
                raise LivemigError(f"VM {vm}: the incoming migration {event['data']['status']}",
                                   details={"status": session.execute("query-status")["status"]})
