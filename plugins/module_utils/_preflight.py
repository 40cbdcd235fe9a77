# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One host's part of a move's preflight in one module call: the qemu_migration_preflight module's handler.

Private to the livemig.qemu collection. Each step is the handler of the module that does it on its own (qemu_vm_lock,
qemu_facts, qemu_host_check, qemu_storage_check, qemu_migration_probe), handed the parameters that module would get
(`Task.with_params`). A failing step fails the call naming the step; what the call took or wrote before (the VM's
lease, the storage marks) is taken back first, because a lease left by a failed preflight blocks the next run until
its ttl runs out.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _facts, _hostcheck, _linktest, _lock, _storage
from ansible_collections.livemig.qemu.plugins.module_utils import _vmmeasure
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._module import Task

Handler = Callable[[Task], dict[str, Any]]
Undo = list[tuple[str, Callable[[], Any]]]
LEASE_KEYS = ("lock_id", "operation", "holder", "ttl", "hosts", "holding", "controller", "replace")
LISTENER_KEYS = ("port", "token", "pid")


def run(task: Task) -> dict[str, Any]:
    """The qemu_migration_preflight module. It changes nothing a run keeps: the run gives its lease back, the
    measure step removes the marks."""
    return {"changed": False, **STEPS[task.params["step"]](task)}


def source(task: Task) -> dict[str, Any]:
    """On the source host: the lease, the facts, the storage marks, the host check (the running VM's accelerator and
    machine type unless given)."""
    with _taken_back_on_failure() as undo:
        result = {"lease": _lease(task, undo) if task.params["lease"] else None, "facts": _facts_of(task, check_kvm=False)}
        # On undo before marking: a marking that fails half way has written some marks.
        undo.append(("removing the marks", lambda: _storage.run(_unchecked(task, state="unmarked"))))
        result["storage"] = _part("marking the storage", "storage", _storage.run, _unchecked(task, state="marked"))
        running = result["facts"]["vms"].get(task.params["name"])
        result["host_check"] = _host_check(task, running)
    return result


def target(task: Task) -> dict[str, Any]:
    """On the target host: the lease, the facts, the host check, the look for the source's marks and, when asked,
    the link-test listener."""
    with _taken_back_on_failure() as undo:
        result = {"lease": _lease(task, undo) if task.params["lease"] else None, "facts": _facts_of(task, check_kvm=task.params["check_kvm"]),
                  "host_check": _host_check(task, None),
                  "storage": _part("looking for the marks", "storage", _storage.run,
                                   _unchecked(task, state="checked"))}
    if task.params["link_listener"]:
        result["link_listener"] = _listener(task, task.params["link_listener"])
    return result


def measure(task: Task) -> dict[str, Any]:
    """On the source host, after the target step: the marks removed, then, when asked, the VM and the link
    measured."""
    result = {"storage": _part("removing the marks", "storage", _storage.run, _unchecked(task, state="unmarked"))}
    if task.params["measure"]:
        measured = _step("measuring the VM and the link", "measurements", _vmmeasure.measured,
                         _unchecked(task, **task.params["measure"]))
        result.update(status=measured["status"], measurements=measured["measurements"], msg=measured["msg"])
    return result


STEPS: dict[str, Handler] = {"source": source, "target": target, "measure": measure}


def host_check_params(check: dict[str, Any] | None, running: dict[str, Any] | None) -> dict[str, Any]:
    """qemu_host_check's options from the `check` option; the accelerator and machine type default to the running
    VM's (`running`, its entry in the facts)."""
    check, running = check or {}, running or {}
    return {"accel": check.get("accel") or running.get("accel"),
            "machine": check.get("machine") or running.get("machine"),
            "address": check.get("address"), "tls_dir": check.get("tls_dir")}


def _lease(task: Task, undo: Undo) -> dict[str, Any]:
    """The VM's lease on this host, after breaking the stale one named; a lease this call takes goes on `undo`."""
    lease = task.params["lease"]
    broken = False
    if lease["break_lock_id"]:
        broken = _step("breaking the lease", "lease", _lock.run,
                       task.with_params(state="unlocked", lock_id=lease["break_lock_id"]))["changed"]
    held = _lock.current(task.paths)
    taken = _part("taking the lease", "lease", _lock.run,
                  task.with_params(state="locked", **{key: lease[key] for key in LEASE_KEYS}))
    if not task.check_mode and not (held and held["id"] == lease["lock_id"]):
        undo.append(("giving the lease back", lambda: _lock.release(task.paths, lease["lock_id"])))
    return {**taken, "broken": broken}


def _facts_of(task: Task, check_kvm: bool) -> dict[str, Any]:
    found = _step("gathering facts", "facts", _facts.run, _unchecked(task, check_kvm=check_kvm, probe=True))
    return found["ansible_facts"]["livemig_qemu"]


def _host_check(task: Task, running: dict[str, Any] | None) -> dict[str, Any]:
    return _part("checking the host", "host_check", _hostcheck.run,
                 _unchecked(task, **host_check_params(task.params["check"], running)))


def _listener(task: Task, options: dict[str, Any]) -> dict[str, Any]:
    """The link-test listener; one that cannot start fails nothing: the measurement then has no link figure and the
    plan says why."""
    try:
        started = _linktest.listening(_unchecked(task, port=0, **options))
    except LivemigError as exc:
        return {"error": str(exc)}
    return {key: started[key] for key in LISTENER_KEYS}


def _unchecked(task: Task, **params: Any) -> Task:
    """A step that reads, or writes what the run removes again (marks, a one-shot listener): it runs in check mode
    too, because the preflight playbook prints the plan in check mode."""
    step = task.with_params(**params)
    step.check_mode = False
    return step


def _step(label: str, key: str, handler: Handler, step: Task) -> dict[str, Any]:
    """Run one step's handler; its failure names the step (`label`) and, as `failed_step`, the result key."""
    try:
        return handler(step)
    except LivemigError as exc:
        failure = exc.about(label)
        failure.details["failed_step"] = key
        raise failure from None


@contextlib.contextmanager
def _taken_back_on_failure() -> Iterator[Undo]:
    """On a step's failure, undo what the earlier steps left, last first; an undo that fails too is added to the
    message, which keeps the step's own cause first."""
    undo: Undo = []
    try:
        yield undo
    except LivemigError as exc:
        also = []
        for label, action in reversed(undo):
            try:
                action()
            except LivemigError as failure:
                also.append(f"{label} failed too: {failure}")
        if not also:
            raise
        raise LivemigError("; ".join([str(exc), *also]), phase=exc.phase, source_running=exc.source_running,
                           target_may_have_run=exc.target_may_have_run, details=exc.details) from None


def _part(label: str, key: str, handler: Handler, step: Task) -> dict[str, Any]:
    """A step's result as a part of the call's: the call reports `changed` once, for all of them."""
    return {name: value for name, value in _step(label, key, handler, step).items() if name != "changed"}
