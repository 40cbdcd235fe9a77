# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qemu_vm_state module: save a VM's state to a file, restore it into a waiting QEMU, or remove the file.

Private to the livemig.qemu collection. The QMP work is `_statefile`; this decides, from the VM's run state and
the file, whether there is anything to do, and says what it did.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files, _statefile, _vmhost
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import ACTIVE
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession, event_time
from ansible_collections.livemig.qemu.plugins.module_utils._state import mark_ran


def run(task: Any) -> dict[str, Any]:
    path = task.params["path"] or task.paths.state_file
    if not os.path.isabs(path):
        raise LivemigError(f"path must be absolute, got {path!r}")
    return {"saved": _saved, "restored": _restored, "absent": _absent}[task.params["state"]](_Job(task, path))


class _Job:
    def __init__(self, task: Any, path: str):
        self.task = task
        self.path = path
        self.check_mode = task.check_mode

    def done(self, changed: bool, msg: str, **result: Any) -> dict[str, Any]:
        return {"changed": changed, "msg": msg, "path": self.path, **result}

    def fail(self, msg: str, **result: Any) -> LivemigError:
        return LivemigError(f"VM {self.task.paths.vm}: {msg}", details={"path": self.path, **result})

    @contextlib.contextmanager
    def session(self) -> Iterator[QMPSession]:
        paths = self.task.paths
        if _vmhost.running_pid(paths) is None:
            raise self.fail(f"no QEMU of this VM runs on this host (no live pid in {paths.pidfile})")
        with self.task.qmp(paths.job_qmp) as session:
            yield session


def has_state(path: str) -> bool:
    return os.path.isfile(path) and os.path.getsize(path) > 0


def _saved(job: _Job) -> dict[str, Any]:
    with job.session() as session:
        status = session.execute("query-status")["status"]
        migration = session.execute("query-migrate").get("status")
        if status == "postmigrate" and migration == "completed" and has_state(job.path):
            return job.done(False, f"already saved to {job.path}; the VM stays paused", status=status)
        if migration in ACTIVE:
            raise job.fail(f"a migration is already {migration} on this VM; cancel it first", status=status)
        if status in ("inmigrate", "postmigrate", "finish-migrate"):
            raise job.fail(f"QEMU is {status}, so it holds no state of its own to save "
                           f"({'restore into it with state=restored' if status == 'inmigrate' else 'already moved'})",
                           status=status)
        if job.check_mode:
            return job.done(True, f"would stop the VM ({status}) and save its state to {job.path}", status=status)
        _files.private_dir(*job.task.paths.private_dirs)  # the default state file's directory among them
        try:
            result = _statefile.save_state(session, job.path, job.task.params["timeout"])
        except _statefile.StateFileError as exc:
            raise job.fail(str(exc), vm_running=exc.vm_running) from exc
    return job.done(True, f"saved the VM state to {job.path}; the VM is paused", **result)


def _restored(job: _Job) -> dict[str, Any]:
    resume = job.task.params["resume"]
    with job.session() as session:
        status = session.execute("query-status")["status"]
        migration = session.execute("query-migrate").get("status")
        if status in ("running", "paused") and migration == "completed":
            if status == "running" or not resume:
                return job.done(False, f"the state was already restored; the VM is {status}", status=status)
            if job.check_mode:
                return job.done(True, "the state was already restored; would resume the VM", status=status)
            return job.done(True, "the state was already restored; resumed the VM",
                            **_resume(session, lambda: mark_ran(job.task.paths.record, job.task.paths.vm)))
        if status != "inmigrate":
            raise job.fail(f"QEMU is {status}, not waiting for an incoming migration (start it with "
                           "qemu_vm state=incoming)", status=status)
        if not has_state(job.path):
            raise job.fail(f"the state file {job.path} is missing or empty", status=status)
        if job.check_mode:
            return job.done(True, f"would restore the VM state from {job.path}"
                            f"{' and resume the VM' if resume else ''}", status=status)
        try:
            result = _statefile.restore_state(session, job.path, job.task.params["timeout"], resume,
                                              job.task.params["parameters"],
                                              before_resume=lambda: mark_ran(job.task.paths.record, job.task.paths.vm))
        except _statefile.StateFileError as exc:
            raise job.fail(f"{exc}; remove this QEMU", vm_running=exc.vm_running) from exc
    return job.done(True, f"restored the VM state from {job.path}", **result)


def _resume(session: QMPSession, before: Any) -> dict[str, Any]:
    """Let a restored VM that waits paused run: `before` (the ran marker), `cont`, and QEMU's time of the resume."""
    with session.subscribe(("RESUME",)) as events:
        before()
        session.execute("cont")
        resumed = events.wait(lambda event: event["event"] == "RESUME", time.monotonic() + _statefile.STOP_TIMEOUT,
                              "the VM to resume")
    return {"status": session.execute("query-status")["status"], "resume_time": event_time(resumed)}


def _absent(job: _Job) -> dict[str, Any]:
    present = [path for path in (job.path, _statefile.partial_path(job.path)) if os.path.lexists(path)]
    if not present:
        return job.done(False, f"no state file at {job.path}")
    if not job.check_mode:
        for path in present:
            try:
                os.unlink(path)
            except OSError as exc:
                raise job.fail(f"cannot remove {path}: {exc.strerror}") from exc
    return job.done(True, f"{'would remove' if job.check_mode else 'removed'} {', '.join(present)}")
