# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qemu_migrate module: run the source side of a live migration, or cancel one.

Private to the livemig.qemu collection. The migration itself is `_migration.SourceMigration`; this checks the
request, records the hand-over in this host's record, and undoes a migration on request.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _mirror, _streamcache, _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration import (
    MANAGED_PARAMETERS, MigrationFailed, MigrationSettings, MirrorTarget, SourceMigration)
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import (
    ACTIVE, PAUSED, POSTCOPY, POSTCOPY_RECOVERY, abort_mirrors, cancel, check_request,
    resume_if_paused)
from ansible_collections.livemig.qemu.plugins.module_utils._paths import mirror_job, mirror_target, node_name
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record, mark_source, updating


def run(task: Any) -> dict[str, Any]:
    with task.qmp(task.paths.job_qmp) as session:
        if task.params["state"] == "completed":
            return migrate(task, session)
        return cancelled(task, session)


def migrate(task: Any, session: QMPSession) -> dict[str, Any]:
    params, paths = task.params, task.paths
    status = session.execute("query-migrate").get("status")
    if status == "completed" and session.execute("query-status")["status"] == "postmigrate":
        return {"changed": False, "msg": "this VM was already migrated away"}
    if params["convergence"] == "postcopy-early" and "postcopy-ram" not in params["capabilities"]:
        raise LivemigError(f"VM {paths.vm}: convergence=postcopy-early needs postcopy-ram in capabilities "
                           "(and on the target)")
    try:
        check_request(session, params["capabilities"], params["parameters"], MANAGED_PARAMETERS)
        tls = _tlsqemu.client(params)
        mirrors = mirror_targets(params)
    except LivemigError as exc:
        raise exc.about(f"VM {paths.vm}") from exc
    if task.check_mode:
        return {"changed": True}
    if tls:
        _tlsqemu.add_client(session, tls)
    migration_id = params["migration_id"] or uuid.uuid4().hex
    mark_source(paths.record, paths.vm, migration_id, params["target_name"], "started")
    settings = MigrationSettings(
        uri=params["uri"], mirrored_nodes=[node_name(disk) for disk in params["disks"]], mirrors_to_start=mirrors,
        mirror_timeout=(params["mirror"] or {}).get("timeout"),
        max_bandwidth=params["max_bandwidth"], downtime_limit_ms=params["downtime_limit_ms"],
        convergence=params["convergence"], capabilities=params["capabilities"], parameters=params["parameters"],
        tls=tls, timeout=params["timeout"], stall_timeout=params["stall_timeout"],
        switchover_timeout=params["switchover_timeout"], progress_path=paths.progress,
        recovery_uri=params["recovery_uri"], recovery_timeout=params["recovery_timeout"],
        before_point_of_no_return=lambda: mark_source(paths.record, paths.vm, migration_id, params["target_name"],
                                                      "switchover"))
    migration = SourceMigration(session, settings)
    try:
        statistics = migration.run()
    except MigrationFailed as exc:
        if not exc.target_may_have_run:
            mark_source(paths.record, paths.vm, migration_id, params["target_name"], "rolled-back")
        exc.details["progress_file"] = paths.progress
        raise exc.about(f"VM {paths.vm}") from exc
    with updating(paths.record, paths.vm) as record:
        record.owner = False
        record.handed_over_to = params["target_name"]
        record.migration.update(phase="completed", at=time.time())
    remember_stream_rate(task, statistics, migration_id, tls is not None)
    return {"changed": True, "statistics": statistics, "progress_file": paths.progress,
            "migration_id": migration_id, "mirrors": list(migration.mirrors_ready.values()),
            "mirror_history": migration.mirror_history}


def remember_stream_rate(task: Any, statistics: dict[str, Any], migration_id: str, tls: bool) -> None:
    """Keep what this move's stream carried, for the next prediction of a move to this target (the probe reads
    it back). A recovered post-copy's time holds its wait for the link: it says nothing about the stream."""
    params = task.params
    if statistics.get("recoveries"):
        return
    key = _streamcache.migration_key(params["uri"], tls, params["capabilities"], params["parameters"])
    _streamcache.record(task.paths.run_dir, key, _streamcache.achieved_rate(statistics.get("query_migrate")),
                        params["link_rate"], migration_id, time.time(), cap=params["max_bandwidth"])


def mirror_targets(params: dict[str, Any]) -> list[MirrorTarget]:
    """The mirrors to start, one per disk, into the target's NBD exports that the `mirror` option names."""
    mirror = params["mirror"]
    if not mirror:
        return []
    missing = [disk for disk in params["disks"] if disk not in mirror["exports"]]
    if missing:
        raise LivemigError(f"mirror.exports names no export for the disks {', '.join(missing)}: give one per disk "
                           "of disks, as qemu_nbd_export or qemu_vm (nbd_export) returned them")
    return [MirrorTarget(node_name(disk), mirror["nbd_host"], mirror["nbd_port"], mirror["exports"][disk],
                         mirror["copy_mode"], mirror["speed"]) for disk in params["disks"]]


def cancelled(task: Any, session: QMPSession) -> dict[str, Any]:
    """Cancel the migration and abort the mirrors; resume the VM, and own it again, only when the caller knows that
    the target never ran it (target_ran=false): also a source whose migration completed."""
    status = session.execute("query-migrate").get("status")
    if status in POSTCOPY:
        raise LivemigError(f"VM {task.paths.vm}: the migration is {status} and cannot be cancelled; "
                           f"{POSTCOPY_RECOVERY}", phase="post-copy", source_running=False, target_may_have_run=True)
    migrating = status in ACTIVE
    nodes = [node_name(disk) for disk in task.params["disks"]]
    mirrors = [node for node in nodes if _mirror.find_job(session, mirror_job(node))
               or _mirror.node_exists(session, mirror_target(node))]
    never_ran = not task.params["target_ran"]
    resume = session.execute("query-status")["status"] in PAUSED and never_ran
    record = load_record(task.paths.record, task.paths.vm)
    reclaim = never_ran and record is not None and (not record.owner or record.migration.get("phase") not in
                                                    (None, "rolled-back"))
    if not (migrating or mirrors or resume or reclaim):
        return {"changed": False}
    if not task.check_mode:
        cancel(session)
        abort_mirrors(session, mirrors)
        if resume:
            resume_if_paused(session)
        if never_ran:  # the VM stays here: this host owns it again, the move is over
            with updating(task.paths.record, task.paths.vm) as current:
                current.owner, current.handed_over_to = True, None
                if current.migration:
                    current.migration.update(phase="rolled-back", at=time.time())
    return {"changed": True, "resumed": resume}
