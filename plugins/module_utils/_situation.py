# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a move stands: whether the request makes sense, whether the move can start, is done or half done, and
what to undo after a failure.

Private to the livemig.qemu collection. Pure functions over what the live_migration role has read (the request,
each host's facts about the VM, the failed task's result), unit-tested from tables. Every text the role shows for
these decisions is written here.
"""
from __future__ import annotations

import json
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import SpecError, check_vm_name

# A target VM in one of these states may have run the guest: its source must not be resumed.
TARGET_RAN_STATUSES = ("running", "paused", "suspended")


def _valid_name(vm: Any) -> bool:
    try:
        check_vm_name(vm)
    except SpecError:
        return False
    return True


def request_problem(vm: Any, vms: Any, source: str, target: str, target_known: bool) -> str:
    """Why the request cannot be served, checked before any host is asked: the failure message, or ''."""
    problem = ""
    if not _valid_name(vm):
        problem = "the VM name is invalid (no / or .., letters, digits, . _ -)"
    elif vm not in (vms or {}):
        problem = "unknown VM (not a key of livemig_vms)"
    elif source == target:
        problem = "source and target are the same host"
    elif not target_known:
        problem = "the target is not in the inventory"
    return f"Cannot migrate {json.dumps(vm)} from {source} to {target}: {problem}" if problem else ""


def refusal(vm: str, source: str, target: str, reason: str, show_plan: bool = False) -> dict[str, Any]:
    """The situation of a move that cannot start; `show_plan` when the plan explains why."""
    return {"kind": "refuse", "reason": reason, "message": f"Cannot migrate {vm} from {source} to {target}: {reason}",
            "show_plan": show_plan}


def situation(vm: str, source: str, target: str, on_source: dict[str, Any], on_target: dict[str, Any]) -> dict[str, Any]:
    """From what each host knows of the VM (qemu_facts' `vms[vm]`, {} if nothing): kind (start, done,
    resume-handover or refuse), reason, message (the line the role prints or fails with) and show_plan."""
    target_owns, target_status = bool(on_target.get("owner")), on_target.get("status", "")
    if target_owns and target_status == "running" and not on_source.get("owner") and not on_source.get("running"):
        return {"kind": "done", "reason": f"{target} owns and runs the VM",
                "message": f"{vm} already runs on {target}, which owns it: nothing to do.", "show_plan": False}
    if target_status == "running" and not target_owns and on_source.get("status", "") != "running":
        return {"kind": "resume-handover", "reason": f"{target} runs the VM after a migration but does not own it yet",
                "message": f"{vm} already runs on {target} after a migration: finishing the hand-over.",
                "show_plan": False}
    if on_target.get("running"):
        return refusal(vm, source, target, f"the target already runs that VM ({on_target.get('status')})")
    if not on_source.get("owner"):
        owner = f", {on_source['handed_over_to']} does" if on_source.get("handed_over_to") else ""
        return refusal(vm, source, target, f"{source} does not own the VM{owner}")
    if on_source.get("status", "") != "running":
        return refusal(vm, source, target,
                       f"the VM is not running on {source} (status: {on_source.get('status', 'none')})")
    return {"kind": "start", "reason": "", "message": "", "show_plan": True}


def first_failure(result: dict[str, Any]) -> dict[str, Any]:
    """The result that failed: the first failed item of a loop, else the task's own result."""
    items = result.get("results")
    failed = [item for item in items if isinstance(item, dict) and item.get("failed")] if isinstance(items, list) else []
    return failed[0] if failed else result


def target_may_have_run(failed: dict[str, Any], on_target: dict[str, Any]) -> bool:
    """What the failed module says (it knows whether the switchover point was passed); when it does not say,
    whether the target's QEMU is in a state that may have run the guest."""
    said = failed.get("target_may_have_run")
    if said is not None:
        return bool(said)
    return on_target.get("status", "none") in TARGET_RAN_STATUSES


def after_failure(result: dict[str, Any], plan: dict[str, Any], target_facts: dict[str, Any] | None,
                  phase: str) -> dict[str, Any]:
    """What to undo after a task of the move failed in the role's `phase`.

    result: the failed task's result (ansible_failed_result); target_facts: the target's qemu_facts read after the
    failure. Returns the failure text, whether the target may have run, what to clean on the target, what to do on
    the source (cancel the migration, restart a cold-stopped VM, remove the state file) and the final message.
    """
    failed = first_failure(result)
    failure = failed.get("msg")
    failure = "unknown error" if failure is None else failure
    on_target = ((target_facts or {}).get("vms") or {}).get(plan["vm"]) or {}
    ran = target_may_have_run(failed, on_target)
    post_copy = failed.get("phase") == "post-copy"
    method, vm, source, target = plan["method"], plan["vm"], plan["source"], plan["target"]
    head = f"{method.capitalize()} migration of {vm} from {source} to {target} failed in the {phase} phase: {failure}."
    if not ran:
        tail = f"It keeps running on {source}; the target was cleaned up."
    elif post_copy:
        tail = (f"The VM runs on {target} in post-copy and still needs memory held by {source}: stop neither QEMU; "
                f"once the migration link works again, resume the post-copy (migrate-recover on {target}, migrate "
                f"with resume on {source}; see livemig.qemu.qemu_migrate).")
    else:
        tail = (f"The VM ran on {target}, so the source will not be resumed: finish the hand-over by running the "
                "migrate playbook again.")
    return {
        "failure": failure,
        "target_may_have_run": ran,
        "post_copy": post_copy,
        "clean_target": not ran,
        "receivers": [] if ran else [*plan["receivers"], *({"label": copy["label"], "path": copy["target"]}
                                                           for copy in plan.get("cdrom_copy") or [])],
        "cancel_source": not ran and method != "cold",
        "restart_source": not ran and method == "cold",
        "remove_source_state": not ran and method == "stateful",
        "message": f"{head} {tail}",
    }
