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

from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import POSTCOPY
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import SpecError, check_vm_name


# The source's migration statuses once the device state may have left for the target.
LATE_SOURCE_STATUSES = ("device", "completed", *POSTCOPY)
# The source's marker phases from which on the target may have been let run.
LATE_SOURCE_PHASES = ("switchover", "completed")


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


def _never_ran(on_target: dict[str, Any]) -> bool:
    """A target QEMU of an earlier move that provably never ran the VM: no ran marker, not the owner, and still
    waiting for the migration or paused by -S before the migration completed."""
    return (on_target.get("status") in ("inmigrate", "paused") and on_target.get("migrate_status") != "completed"
            and not on_target.get("owner") and "ran" not in (on_target.get("migration") or {}))


def situation(vm: str, source: str, target: str, on_source: dict[str, Any], on_target: dict[str, Any]) -> dict[str, Any]:
    """From what each host knows of the VM (qemu_facts' `vms[vm]`, {} if nothing), read while this run holds the
    VM's lease on both hosts: kind (start, done, resume-handover, recover or refuse), reason, message (the line
    the role prints or fails with), show_plan, and for a start `stale_target`: the move id of a target QEMU an
    earlier, interrupted move left behind, which never ran the VM and is removed first (or None)."""
    target_owns, target_status = bool(on_target.get("owner")), on_target.get("status", "")
    if target_owns and target_status == "running" and not on_source.get("owner") and not on_source.get("running"):
        return {"kind": "done", "reason": f"{target} owns and runs the VM",
                "message": f"{vm} already runs on {target}, which owns it: nothing to do.", "show_plan": False}
    # A target paused after a completed migration waits for its resume watcher (-S), which went away.
    arrived = target_status == "running" or (target_status == "paused" and on_target.get("migrate_status") == "completed")
    if arrived and not target_owns and on_source.get("status", "") != "running":
        return {"kind": "resume-handover", "reason": f"{target} runs the VM after a migration but does not own it yet",
                "message": f"{vm} already runs on {target} after a migration: finishing the hand-over.",
                "show_plan": False}
    marker = on_source.get("migration") or {}
    if on_source.get("running") and on_source.get("status") != "running" and marker.get("phase") in LATE_SOURCE_PHASES:
        return {"kind": "recover", "reason": f"an earlier move to {marker.get('peer') or target} passed its point of "
                                             "no return and was interrupted",
                "message": f"{vm} waits paused on {source}: an earlier move ({marker.get('id')}) was interrupted after "
                           f"{source} may have let it run on {marker.get('peer') or target}; deciding from "
                           f"{target}'s ran marker who keeps it.",
                "migration_id": marker.get("id"), "show_plan": False}
    stale = on_target.get("running") and _never_ran(on_target)
    if on_target.get("running") and not stale:
        return refusal(vm, source, target, f"the target already runs that VM ({on_target.get('status')})")
    if not on_source.get("owner"):
        owner = f", {on_source['handed_over_to']} does" if on_source.get("handed_over_to") else ""
        return refusal(vm, source, target, f"{source} does not own the VM{owner}")
    if on_source.get("status", "") != "running":
        return refusal(vm, source, target,
                       f"the VM is not running on {source} (status: {on_source.get('status', 'none')})")
    stale_id = ((on_target.get("migration") or {}).get("id") or "unrecorded") if stale else None
    return {"kind": "start", "reason": "", "show_plan": not stale, "stale_target": stale_id,
            "message": f"{target} still has a QEMU of an earlier move ({stale_id}) that never ran the VM: it is "
                       "removed first." if stale else ""}


def first_failure(result: dict[str, Any]) -> dict[str, Any]:
    """The result that failed: the first failed item of a loop, else the task's own result."""
    items = result.get("results")
    failed = [item for item in items if isinstance(item, dict) and item.get("failed")] if isinstance(items, list) else []
    return failed[0] if failed else result


def _answer(report: Any) -> bool | None:
    """What the target's abort step says: whether the VM ran there; None when the target did not answer."""
    if not isinstance(report, dict) or report.get("unreachable") or report.get("failed") or report.get("skipped"):
        return None
    ran = report.get("ran")
    return None if ran is None else bool(ran)


def source_passed(plan: dict[str, Any], phase: str, failed: dict[str, Any], on_source: dict[str, Any],
                  migration_id: str) -> bool:
    """Whether the source may have let the target run the VM, from the source's own record and QEMU."""
    method = plan["method"]
    if method == "cold":
        return phase == "target boot"
    marker = on_source.get("migration") or {}
    marked = marker.get("id") == migration_id and marker.get("phase") in LATE_SOURCE_PHASES
    if method == "stateful":  # committed; QEMU's migration status is the save's, not the target's
        return marked or bool(failed.get("target_may_have_run"))
    return marked or bool(failed.get("target_may_have_run")) \
        or on_source.get("migrate_status") in LATE_SOURCE_STATUSES


def after_failure(result: dict[str, Any], plan: dict[str, Any], source_facts: dict[str, Any] | None,
                  target_report: Any, phase: str, migration_id: str) -> dict[str, Any]:
    """What to undo after a task of the move failed in the role's `phase`.

    result: the failed task's result (ansible_failed_result); source_facts: the source's qemu_facts read after the
    failure; target_report: the target's qemu_migrate_incoming state=aborted result (which ended a target QEMU that
    never ran the VM), or what Ansible registered when the target did not answer. The target's ran marker decides;
    without an answer, the source's own record and QEMU do. Returns the outcome (source: the VM stays on or goes
    back to the source; target: it ran on the target; post-copy; unknown: the target did not answer after the
    source may have let it run), the steps to take and the final message.
    """
    failed = first_failure(result)
    failure = failed.get("msg")
    failure = "unknown error" if failure is None else failure
    vm, method, source, target = plan["vm"], plan["method"], plan["source"], plan["target"]
    on_source = ((source_facts or {}).get("vms") or {}).get(vm) or {}
    ran = _answer(target_report)
    post_copy = failed.get("phase") == "post-copy" or on_source.get("migrate_status") in POSTCOPY
    ended = post_copy and on_source.get("migrate_status") not in POSTCOPY  # the source's QEMU gave up the post-copy
    if ended and ran and (target_report or {}).get("migrate_status") == "completed":
        outcome = "target"  # every page had reached the target before the source gave up
    elif ended and ran is False:
        outcome = "source"  # it gave up before the target loaded the device state: the target was ended
    elif ended:
        outcome = "post-copy-ended"
    elif post_copy:
        outcome = "post-copy"
    elif ran:
        outcome = "target"
    elif ran is None and source_passed(plan, phase, failed, on_source, migration_id):
        outcome = "unknown"
    else:
        outcome = "source"
    head = f"{method.capitalize()} migration of {vm} from {source} to {target} failed in the {phase} phase: {failure}."
    back = outcome == "source"
    return {
        "failure": failure,
        "outcome": outcome,
        "target_may_have_run": not back,
        "post_copy": post_copy,
        "clean_target": back and ran is False,
        "receivers": [*plan["receivers"], *({"label": copy["label"], "path": copy["target"]}
                                            for copy in plan.get("cdrom_copy") or [])] if back and ran is False else [],
        "cancel_source": back and method != "cold",
        "restart_source": back and method == "cold",
        "retire_source": outcome == "target",
        "remove_source_state": method == "stateful" and outcome in ("source", "target"),
        "message": f"{head} {_tail(outcome, vm, source, target, target_report)}",
    }


def _tail(outcome: str, vm: str, source: str, target: str, target_report: Any) -> str:
    if outcome == "source":
        cleaned = "the target was cleaned up" if _answer(target_report) is False else \
            f"{target} did not answer, so what the move left there stays until the next move cleans it up"
        return f"It keeps running on {source}; {cleaned}."
    if outcome == "post-copy":
        return (f"The VM runs on {target} in post-copy and still needs memory held by {source}: stop neither QEMU; "
                f"once the migration link works again, resume the post-copy (migrate-recover on {target}, migrate "
                f"with resume=true on {source}; see livemig.qemu.qemu_migrate).")
    if outcome == "post-copy-ended":
        return (f"{source}'s QEMU ended the post-copy, which cannot be resumed now; both QEMUs are kept and neither "
                f"is resumed. If {target}'s query-migrate says completed, the VM is whole there: run the migrate "
                f"playbook again to finish the hand-over. Otherwise {target} lacks memory only {source} holds: end "
                f"the VM's QEMU on {target} (livemig.qemu.qemu_vm state=absent there) and resume it on {source} "
                f"(livemig.qemu.qemu_qmp command=cont), whose RAM and disks are those of the switchover.")
    if outcome == "unknown":
        return (f"{target} did not answer after {source} may have let the VM run there, so {source} keeps its copy "
                f"paused and will not resume it. Once {target} answers, run the migrate playbook again: it finishes "
                f"the move on {target} if the VM ran there, or resumes it on {source} if it never did.")
    if target_report.get("running"):
        return (f"The VM runs on {target}, so {source} will never resume it; its QEMU on {source} was stopped. "
                "Finish the hand-over by running the migrate playbook again.")
    return (f"The VM ran on {target}, whose QEMU is gone, so {source} will never resume it: its RAM and disks are "
            f"older. {target} now owns the VM and keeps its disks, the newest; start it there from them with "
            f"ansible-playbook -i INVENTORY livemig.qemu.start -e livemig_vm={vm} -e livemig_host={target}. "
            f"Its QEMU on {source} was stopped; its older disks there stay until you remove them.")
