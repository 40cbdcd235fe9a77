# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qemu_state_transfer module: the source side of a stateful move as one job that never leaves the VM paused.

Private to the livemig.qemu collection. `sent` saves the VM's state (the VM pauses), sends the local disks and the
state file to the target's receivers, then waits for the caller's commit. Without a commit in time, or on any
failure, it resumes the VM here by itself: the target has not been let run it (the caller restores it there paused,
commits here, and only then lets it run). `committed` is that commit. Both meet in this host's record of the VM,
under its lock: the phase goes `started`, `sent` (everything is on the target), then `switchover` (committed) or
`rolled-back` (resumed here), whichever comes first.
"""
from __future__ import annotations

import time
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _nbdcopy, _qemuimg, _statefile, _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import resume_if_paused
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError
from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record, mark_source, updating

POLL = 0.2  # seconds between two looks for the commit


def run(task: Any) -> dict[str, Any]:
    return (sent if task.params["state"] == "sent" else committed)(task)


def _phase(task: Any) -> str | None:
    record = load_record(task.paths.record, task.paths.vm)
    marker = record.migration if record else {}
    return marker.get("phase") if marker.get("id") == task.params["migration_id"] else None


def committed(task: Any) -> dict[str, Any]:
    """The target holds the VM, restored and paused: from now on the source never resumes it by itself."""
    paths, migration_id = task.paths, task.params["migration_id"]
    phase = _phase(task)
    if phase == "switchover":
        return {"changed": False, "phase": phase}
    if phase != "sent":
        why = {"started": "the job has not sent everything yet", None: "this host has no such move"}.get(
            phase, "it resumed on this host already (the copy failed, or the commit came too late)")
        raise LivemigError(f"VM {paths.vm}: the move {migration_id} cannot be committed here: {why}",
                           phase=phase or "none")
    if task.check_mode:
        return {"changed": True, "phase": "switchover"}
    with updating(paths.record, paths.vm) as record:
        if record.migration.get("phase") != "sent":
            raise LivemigError(f"VM {paths.vm}: the move {migration_id} resumed on this host just now: not committed")
        record.migration.update(phase="switchover", at=time.time())
    return {"changed": True, "phase": "switchover"}


def sent(task: Any) -> dict[str, Any]:
    params, paths = task.params, task.paths
    tls = _tlsqemu.client(params)
    if task.check_mode:
        return {"changed": True, "msg": "would save the VM's state, send it and the disks, and wait for the commit"}
    qemu_img = task.tool("qemu-img")
    path = params["path"] or paths.state_file
    mark_source(paths.record, paths.vm, params["migration_id"], params["target_name"], "started")
    try:
        with task.qmp(paths.job_qmp) as session:
            saved = _statefile.save_state(session, path, params["timeout"])
    except (LivemigError, _statefile.StateFileError) as exc:
        _give_back(task, resume=False)  # save_state resumed the VM itself
        raise LivemigError(f"VM {paths.vm}: {exc}", source_running=True, target_may_have_run=False) from exc
    try:
        copies = [_send(qemu_img, copy, params, tls) for copy in params["copies"]]
        copies.append(_send(qemu_img, {"src": path, "format": "raw", "uri": params["state_uri"]}, params, tls))
    except (LivemigError, OSError) as exc:
        raise _given_back(task, f"sending to the target failed: {exc}") from exc
    mark_source(paths.record, paths.vm, params["migration_id"], params["target_name"], "sent")
    deadline = time.monotonic() + params["commit_timeout"]
    while _phase(task) == "sent":
        if time.monotonic() > deadline:
            raise _given_back(task, f"the target did not take the VM over within {params['commit_timeout']:g}s "
                                    "of the copy")
        time.sleep(POLL)
    if _phase(task) != "switchover":
        raise LivemigError(f"VM {paths.vm}: the move was rolled back while this job waited", source_running=True,
                           target_may_have_run=False)
    return {"changed": True, "saved": saved, "copies": copies, "phase": "switchover"}


def _send(qemu_img: Any, copy: dict[str, Any], params: dict[str, Any],
          tls: _tlsqemu.Client | None) -> dict[str, Any]:
    """One copy, zeros skipped into an empty receiver; what it moved (a block device moves all of its disk)."""
    size = copy.get("size")
    allocated = size if size and _nbdcopy.is_device(copy["src"]) else \
        _qemuimg.allocation(qemu_img, copy["src"], copy["format"], True, params["timeout"])[0]
    seconds = _nbdcopy.send(qemu_img, copy["src"], copy["format"], copy["uri"], True, params["timeout"], size,
                            copy.get("target_is_zero", True), tls)
    return {"src": copy["src"], "uri": copy["uri"], "seconds": round(seconds, 3), "bytes_allocated": allocated}


def _give_back(task: Any, resume: bool = True) -> bool:
    """Unless the move was committed meanwhile: mark it rolled back and resume the VM here. True if given back."""
    paths = task.paths
    with updating(paths.record, paths.vm) as record:
        if record.migration.get("id") == task.params["migration_id"] and record.migration.get("phase") == "switchover":
            return False
        record.migration.update(phase="rolled-back", at=time.time())
    if resume:
        with task.qmp(paths.job_qmp) as session:
            resume_if_paused(session)
    return True


def _given_back(task: Any, cause: str) -> LivemigError:
    try:
        back = _give_back(task)
    except (LivemigError, QMPError) as exc:
        return LivemigError(f"VM {task.paths.vm}: {cause}; resuming it here failed too: {exc}", source_running=False,
                            target_may_have_run=False)
    if not back:
        return LivemigError(f"VM {task.paths.vm}: {cause}, after the move was committed: the target holds the VM",
                            source_running=False, target_may_have_run=True)
    return LivemigError(f"VM {task.paths.vm}: {cause}; the VM was resumed here", source_running=True,
                        target_may_have_run=False)
