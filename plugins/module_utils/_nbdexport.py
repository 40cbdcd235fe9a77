# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NBD server of a VM's own QEMU and its disk exports: what a block mirror from another host writes into.

Private to the livemig.qemu collection. `run` is the qemu_nbd_export module's handler. The server's address,
port and export names are this host's record's volatile key `nbd`.
"""
from __future__ import annotations

import secrets
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import bind_with_retry
from ansible_collections.livemig.qemu.plugins.module_utils._module import Task
from ansible_collections.livemig.qemu.plugins.module_utils._paths import EXPORT_PREFIX, export_id, node_name
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import HostRecord, load_record, save_record
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import DISK_NAME


def our_exports(session: QMPSession) -> dict[str, dict]:
    """This collection's exports by disk name."""
    return {item["id"][len(EXPORT_PREFIX):]: item for item in session.execute("query-block-exports")
            if item["id"].startswith(EXPORT_PREFIX)}


def start_server(session: QMPSession, address: str, port: int, connections: int,
                 tls: _tlsqemu.Server | None = None) -> int:
    """Start QEMU's NBD server on `address`, on `port` or a free one, for at most `connections` clients at once
    (one mirror per disk), over TLS when `tls` says so; the port it listens on."""
    if tls:
        _tlsqemu.add_server(session, tls)

    def listen(chosen: int) -> None:
        session.execute("nbd-server-start", {"addr": {"type": "inet", "data": {"host": address, "port": str(chosen)}},
                                             "max-connections": connections, **_tlsqemu.nbd_server_arguments(tls)})
    return bind_with_retry(listen, address, port)[1]


def present(task: Task, session: QMPSession, record: HostRecord) -> dict[str, Any]:
    params = task.params
    tls = _tlsqemu.server(params)
    server = record.volatile.get("nbd")
    exports = our_exports(session)
    missing = [disk for disk in params["disks"] if disk not in exports]
    names = dict(server.get("exports", {})) if server else {}
    if server and not missing:
        return {"changed": False, "host": server["host"], "port": server["port"], "exports": names}
    if task.check_mode:
        return {"changed": True, "exports": {}}
    if not server:
        server = {"host": params["address"],
                  "port": start_server(session, params["address"], params["port"], max(len(params["disks"]), 1), tls)}
    for disk in missing:
        names[disk] = f"{disk}-{secrets.token_urlsafe(12)}"
        session.execute("block-export-add", {"type": "nbd", "id": export_id(disk), "node-name": node_name(disk),
                                             "name": names[disk], "writable": True})
    server["exports"] = names
    record.volatile["nbd"] = server
    return {"changed": True, "host": server["host"], "port": server["port"], "exports": names}


def close(session: QMPSession) -> None:
    """Drop our exports and their connections at once, and stop the NBD server."""
    for disk in our_exports(session):
        session.execute("block-export-del", {"id": export_id(disk), "mode": "hard"})
    try:
        session.execute("nbd-server-stop")
    except QMPError as exc:
        if "not running" not in str(exc).lower():
            raise


def absent(task: Task, session: QMPSession, record: HostRecord) -> dict[str, Any]:
    if not our_exports(session) and "nbd" not in record.volatile:
        return {"changed": False}
    if not task.check_mode:
        close(session)
        record.volatile.pop("nbd", None)
    return {"changed": True}


def run(task: Task) -> dict[str, Any]:
    """The qemu_nbd_export module: the server and exports present, or none of them."""
    paths = task.paths
    bad = [disk for disk in task.params["disks"] if not DISK_NAME.fullmatch(disk)]
    if bad:
        raise LivemigError(f"invalid disk names {bad}: each must match {DISK_NAME.pattern}")
    record = load_record(paths.record, paths.vm) or HostRecord(vm=paths.vm)
    with task.qmp(paths.qmp) as session:
        result = (present if task.params["state"] == "present" else absent)(task, session, record)
    if result["changed"] and not task.check_mode:
        save_record(paths.record, record)
    return result
