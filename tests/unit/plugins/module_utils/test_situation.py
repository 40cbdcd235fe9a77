"""Where a move stands, from tables: the request check, the situation from both hosts' facts, the rollback."""
from __future__ import annotations

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._situation import (
    after_failure, first_failure, request_problem, situation)

VMS = {"web1": {}, "a" * 63: {}, "-web": {}}
INVALID = "the VM name is invalid (no / or .., letters, digits, . _ -)"

# Each row: id, vm, source, target, target in the inventory, expected message ('' when fine).
REQUEST_CASES = [
    ("fine", "web1", "hv1", "hv2", True, ""),
    ("path out of the directory", "../etc", "hv1", "hv2", True, f'Cannot migrate "../etc" from hv1 to hv2: {INVALID}'),
    ("slash", "a/b", "hv1", "hv2", True, f'Cannot migrate "a/b" from hv1 to hv2: {INVALID}'),
    ("two dots inside", "x..y", "hv1", "hv2", True, f'Cannot migrate "x..y" from hv1 to hv2: {INVALID}'),
    ("starts with a dash", "-web", "hv1", "hv2", True, f'Cannot migrate "-web" from hv1 to hv2: {INVALID}'),
    ("64 characters", "a" * 64, "hv1", "hv2", True, f'Cannot migrate "{"a" * 64}" from hv1 to hv2: {INVALID}'),
    ("trailing newline", "web1\n", "hv1", "hv2", True, f'Cannot migrate "web1\\n" from hv1 to hv2: {INVALID}'),
    ("not a name", 7, "hv1", "hv2", True, f"Cannot migrate 7 from hv1 to hv2: {INVALID}"),
    ("unknown VM", "web2", "hv1", "hv2", True,
     'Cannot migrate "web2" from hv1 to hv2: unknown VM (not a key of livemig_vms)'),
    ("same host", "web1", "hv1", "hv1", True,
     'Cannot migrate "web1" from hv1 to hv1: source and target are the same host'),
    ("target not in the inventory", "a" * 63, "hv1", "hv9", False,
     f'Cannot migrate "{"a" * 63}" from hv1 to hv9: the target is not in the inventory'),
    ("a bad name is named first", "../etc", "hv1", "hv1", False, f'Cannot migrate "../etc" from hv1 to hv1: {INVALID}'),
]


@pytest.mark.parametrize("vm,source,target,known,expected", [case[1:] for case in REQUEST_CASES],
                         ids=[case[0] for case in REQUEST_CASES])
def test_request_problem(vm, source, target, known, expected):
    assert request_problem(vm, VMS, source, target, known) == expected


RUNNING_OWNER = {"owner": True, "status": "running", "running": True}
RUNNING_GUEST = {"owner": False, "status": "running", "running": True}
POSTMIGRATE = {"owner": False, "status": "postmigrate", "running": True}
GONE = {"owner": False, "handed_over_to": "hv2"}

# Each row: id, the source's facts of the VM, the target's, expected kind, expected message.
SITUATION_CASES = [
    ("the source runs and owns it", RUNNING_OWNER, {}, "start", ""),
    ("moved already", {}, RUNNING_OWNER, "done", "web1 already runs on hv2, which owns it: nothing to do."),
    ("moved, the source gave it up", GONE, RUNNING_OWNER, "done", "web1 already runs on hv2, which owns it: nothing to do."),
    ("target runs, source in postmigrate", POSTMIGRATE, RUNNING_GUEST, "resume-handover",
     "web1 already runs on hv2 after a migration: finishing the hand-over."),
    ("target runs, source gone", {}, RUNNING_GUEST, "resume-handover",
     "web1 already runs on hv2 after a migration: finishing the hand-over."),
    ("both run it", RUNNING_OWNER, RUNNING_GUEST, "refuse",
     "Cannot migrate web1 from hv1 to hv2: the target already runs that VM (running)"),
    ("target owns, source still runs", {"owner": False, "status": "running", "running": True}, RUNNING_OWNER,
     "refuse", "Cannot migrate web1 from hv1 to hv2: the target already runs that VM (running)"),
    ("a stale target paused by -S, never ran", RUNNING_OWNER,
     {"owner": False, "status": "paused", "running": True, "migration": {"id": "m0"}}, "start",
     "hv2 still has a QEMU of an earlier move (m0) that never ran the VM: it is removed first."),
    ("a stale incoming target of an old record", RUNNING_OWNER, {"owner": False, "status": "inmigrate", "running": True},
     "start", "hv2 still has a QEMU of an earlier move (unrecorded) that never ran the VM: it is removed first."),
    ("a paused target that ran", RUNNING_OWNER,
     {"owner": False, "status": "paused", "running": True, "migration": {"id": "m0", "ran": 1.0}}, "refuse",
     "Cannot migrate web1 from hv1 to hv2: the target already runs that VM (paused)"),
    ("interrupted after the switchover", {"owner": False, "status": "postmigrate", "running": True,
                                          "migration": {"id": "m0", "phase": "completed", "peer": "hv2"}},
     {"owner": False, "status": "inmigrate", "running": True, "migration": {"id": "m0"}}, "recover",
     "web1 waits paused on hv1: an earlier move (m0) was interrupted after hv1 may have let it run on hv2; deciding "
     "from hv2's ran marker who keeps it."),
    ("rolled back before the switchover", {**RUNNING_OWNER, "migration": {"id": "m0", "phase": "rolled-back"}}, {},
     "start", ""),
    ("target arrived and waits paused for its gone watcher", POSTMIGRATE,
     {"owner": False, "status": "paused", "running": True, "migrate_status": "completed"}, "resume-handover",
     "web1 already runs on hv2 after a migration: finishing the hand-over."),
    ("handed over, the target does not run it", GONE, {}, "refuse",
     "Cannot migrate web1 from hv1 to hv2: hv1 does not own the VM, hv2 does"),
    ("nobody knows it", {}, {}, "refuse", "Cannot migrate web1 from hv1 to hv2: hv1 does not own the VM"),
    ("owned, stopped", {"owner": True, "status": "shutdown", "running": False}, {}, "refuse",
     "Cannot migrate web1 from hv1 to hv2: the VM is not running on hv1 (status: shutdown)"),
    ("owned, no QEMU", {"owner": True}, {}, "refuse",
     "Cannot migrate web1 from hv1 to hv2: the VM is not running on hv1 (status: none)"),
]


@pytest.mark.parametrize("on_source,on_target,kind,message", [case[1:] for case in SITUATION_CASES],
                         ids=[case[0] for case in SITUATION_CASES])
def test_situation(on_source, on_target, kind, message):
    found = situation("web1", "hv1", "hv2", on_source, on_target)
    assert (found["kind"], found["message"]) == (kind, message)
    assert found["show_plan"] is (kind == "start" and not found["stale_target"])
    if kind == "refuse":
        assert found["message"] == f"Cannot migrate web1 from hv1 to hv2: {found['reason']}"


RECEIVERS = [{"label": "root", "path": "/img/b/web1-root.qcow2"}, {"label": "state", "path": "/img/b/web1.state"}]
MOVE = "move-1"


def plan(method):
    return {"vm": "web1", "source": "hv1", "target": "hv2", "method": method, "receivers": RECEIVERS}


def source(phase=None, status=None, move=MOVE):
    """The source's facts after the failure: its marker's phase and QEMU's migration status."""
    marker = {"id": move, "role": "source", "peer": "hv2", "phase": phase} if phase else {}
    return {"vms": {"web1": {"status": "running", "migrate_status": status, "migration": marker}}}


# What the target's abort step registered.
NEVER_RAN = {"changed": True, "ran": False, "killed": True, "running": False}
RUNS_THERE = {"changed": False, "ran": True, "running": True, "status": "running"}
RAN_AND_GONE = {"changed": True, "ran": True, "running": False, "took_ownership": True}
UNREACHABLE = {"unreachable": True, "msg": "Failed to connect to the host via ssh"}
ABORT_FAILED = {"failed": True, "msg": "QMP on /run/livemig/web1/qmp: timed out"}
OTHER_MOVE = {"changed": False, "ran": None, "running": True}
SKIPPED = {"changed": False, "skipped": True}

KEEPS = "It keeps running on hv1; the target was cleaned up."
KEEPS_UNANSWERED = ("It keeps running on hv1; hv2 did not answer, so what the move left there stays until the next "
                    "move cleans it up.")
UNKNOWN = ("hv2 did not answer after hv1 may have let the VM run there, so hv1 keeps its copy paused and will not "
           "resume it. Once hv2 answers, run the migrate playbook again: it finishes the move on hv2 if the VM ran "
           "there, or resumes it on hv1 if it never did.")
RUNS = ("The VM runs on hv2, so hv1 will never resume it; its QEMU on hv1 was stopped. Finish the hand-over by running "
        "the migrate playbook again.")
START_THERE = ("The VM ran on hv2, whose QEMU is gone, so hv1 will never resume it: its RAM and disks are older. hv2 "
               "now owns the VM and keeps its disks, the newest; start it there from them with ansible-playbook -i "
               "INVENTORY livemig.qemu.start -e livemig_vm=web1 -e livemig_host=hv2. Its QEMU on hv1 was stopped; "
               "its older disks there stay until you remove them.")
POST_COPY = ("The VM runs on hv2 in post-copy and still needs memory held by hv1: stop neither QEMU; once the migration "
             "link works again, resume the post-copy (migrate-recover on hv2, migrate with resume=true on hv1; see "
             "livemig.qemu.qemu_migrate).")
POST_COPY_ENDED = (
    "hv1's QEMU ended the post-copy, which cannot be resumed now; both QEMUs are kept and neither is resumed. If hv2's "
    "query-migrate says completed, the VM is whole there: run the migrate playbook again to finish the hand-over. "
    "Otherwise hv2 lacks memory only hv1 holds: end the VM's QEMU on hv2 (livemig.qemu.qemu_vm state=absent there) "
    "and resume it on hv1 (livemig.qemu.qemu_qmp command=cont), whose RAM and disks are those of the switchover.")
ENDED = {"failed": True, "msg": "y", "phase": "post-copy", "target_may_have_run": True}
LOOP = {"failed": True, "msg": "One or more items failed",
        "results": [{"failed": False, "msg": "ok"}, {"failed": True, "msg": "the mirror of disk-root failed"},
                    {"failed": True, "msg": "second"}]}
FAILED = {"failed": True, "msg": "x"}
LATE = {"failed": True, "msg": "x", "target_may_have_run": True}

# Each row: id, failed result, method, phase, source facts, target report, outcome, message tail, failure text.
FAILURE_CASES = [
    ("the target never ran: ended and cleaned", FAILED, "live-mirror", "disk mirror", source("started"), NEVER_RAN,
     "source", KEEPS, "x"),
    ("the module says it may have run, but the target never did", LATE, "live-mirror", "switchover",
     source("switchover", "failed"), NEVER_RAN, "source", KEEPS, "x"),
    ("a completed migration whose target never ran", FAILED, "live-shared", "hand-over",
     source("completed", "completed"), NEVER_RAN, "source", KEEPS, "x"),
    ("the VM runs on the target", FAILED, "live-mirror", "hand-over", source("completed", "completed"), RUNS_THERE,
     "target", RUNS, "x"),
    ("the VM ran on the target, whose QEMU is gone", FAILED, "live-mirror", "hand-over",
     source("completed", "completed"), RAN_AND_GONE, "target", START_THERE, "x"),
    ("unreachable before the switchover", FAILED, "live-mirror", "disk mirror", source("started", "active"),
     UNREACHABLE, "source", KEEPS_UNANSWERED, "x"),
    ("unreachable after the switchover marker", FAILED, "live-mirror", "RAM pre-copy and switchover",
     source("switchover", "failed"), UNREACHABLE, "unknown", UNKNOWN, "x"),
    ("a switchover marker of another move does not count", FAILED, "live-mirror", "disk mirror",
     source("switchover", None, move="move-0"), UNREACHABLE, "source", KEEPS_UNANSWERED, "x"),
    ("unreachable, QEMU says completed", FAILED, "live-mirror", "hand-over", source(None, "completed"), UNREACHABLE,
     "unknown", UNKNOWN, "x"),
    ("unreachable, the module says it may have run", LATE, "live-shared", "RAM pre-copy and switchover",
     source("started"), UNREACHABLE, "unknown", UNKNOWN, "x"),
    ("the abort step failed: no answer", FAILED, "live-mirror", "hand-over", source("completed", "completed"),
     ABORT_FAILED, "unknown", UNKNOWN, "x"),
    ("the target's record belongs to another move: no answer", FAILED, "live-mirror", "target start",
     source("started"), OTHER_MOVE, "source", KEEPS_UNANSWERED, "x"),
    ("post-copy by the module's phase", {"failed": True, "msg": "the link failed", "phase": "post-copy",
                                         "target_may_have_run": True}, "live-mirror", "RAM pre-copy and switchover",
     source("switchover", "postcopy-paused"), SKIPPED, "post-copy", POST_COPY, "the link failed"),
    ("post-copy by the source's QEMU", FAILED, "live-mirror", "hand-over", source("switchover", "postcopy-active"),
     SKIPPED, "post-copy", POST_COPY, "x"),
    ("post-copy ended by the source's QEMU, the target waits for memory", ENDED, "live-mirror",
     "RAM pre-copy and switchover", source("switchover", "failed"), {**RUNS_THERE, "migrate_status": "postcopy-paused"},
     "post-copy-ended", POST_COPY_ENDED, "y"),
    ("post-copy ended by the source's QEMU after the last page reached the target", ENDED, "live-mirror",
     "RAM pre-copy and switchover", source("switchover", "failed"), {**RUNS_THERE, "migrate_status": "completed"},
     "target", RUNS, "y"),
    ("post-copy ended by the source's QEMU before the target loaded the device state", ENDED, "live-mirror",
     "RAM pre-copy and switchover", source("switchover", "failed"), NEVER_RAN, "source", KEEPS, "y"),
    ("post-copy ended by the source's QEMU, the target does not answer", ENDED, "live-mirror",
     "RAM pre-copy and switchover", source("switchover", "failed"), UNREACHABLE, "post-copy-ended", POST_COPY_ENDED,
     "y"),
    ("post-copy in the text only is not post-copy", {"failed": True, "msg": "lost in post-copy"}, "live-mirror",
     "hand-over", source("completed", "completed"), RUNS_THERE, "target", RUNS, "lost in post-copy"),
    ("stateful, unreachable after the commit", FAILED, "stateful", "restore", source("switchover", "completed"),
     UNREACHABLE, "unknown", UNKNOWN, "x"),
    ("stateful, unreachable before the commit: the save's status does not count", FAILED, "stateful", "restore",
     source("started", "completed"), UNREACHABLE, "source", KEEPS_UNANSWERED, "x"),
    ("stateful, unreachable while copying", FAILED, "stateful", "copy", source("started"), UNREACHABLE, "source",
     KEEPS_UNANSWERED, "x"),
    ("cold, unreachable while booting the target", FAILED, "cold", "target boot", {"vms": {}}, UNREACHABLE,
     "unknown", UNKNOWN, "x"),
    ("cold, the target booted", FAILED, "cold", "target boot", {"vms": {}}, RUNS_THERE, "target", RUNS, "x"),
    ("a loop: its first failed item", LOOP, "live-mirror", "disk mirror", source("started"), NEVER_RAN, "source",
     KEEPS, "the mirror of disk-root failed"),
    ("no message", {"failed": True}, "cold", "shutdown", None, NEVER_RAN, "source", KEEPS, "unknown error"),
]


@pytest.mark.parametrize("result,method,phase,on_source,report,outcome,tail,failure",
                         [case[1:] for case in FAILURE_CASES], ids=[case[0] for case in FAILURE_CASES])
def test_after_failure(result, method, phase, on_source, report, outcome, tail, failure):
    decided = after_failure(result, plan(method), on_source, report, phase, MOVE)
    assert decided["outcome"] == outcome
    assert decided["target_may_have_run"] is (outcome != "source")
    assert decided["failure"] == failure
    assert decided["message"] == (f"{method.capitalize()} migration of web1 from hv1 to hv2 failed in the {phase} "
                                  f"phase: {failure}. {tail}")


# Each row: method, what is undone when the target never ran: cancel, restart, remove the state file.
UNDO_CASES = [
    ("live-mirror", True, False, False),
    ("live-shared", True, False, False),
    ("stateful", True, False, True),
    ("cold", False, True, False),
]


@pytest.mark.parametrize("method,cancel,restart,remove_state", UNDO_CASES)
def test_what_is_undone_by_method_when_the_target_never_ran(method, cancel, restart, remove_state):
    decided = after_failure(FAILED, plan(method), source("started"), NEVER_RAN, "copy", MOVE)
    assert (decided["clean_target"], decided["receivers"], decided["retire_source"]) == (True, RECEIVERS, False)
    assert (decided["cancel_source"], decided["restart_source"], decided["remove_source_state"]) == \
        (cancel, restart, remove_state)


@pytest.mark.parametrize("method", [case[0] for case in UNDO_CASES])
def test_once_the_vm_ran_on_the_target_the_source_is_retired_and_the_target_kept(method):
    decided = after_failure(FAILED, plan(method), source("completed"), RAN_AND_GONE, "hand-over", MOVE)
    assert decided["clean_target"] is False and decided["receivers"] == [] and decided["retire_source"] is True
    assert not (decided["cancel_source"] or decided["restart_source"])
    assert decided["remove_source_state"] is (method == "stateful")  # a stale RAM snapshot


@pytest.mark.parametrize("method", [case[0] for case in UNDO_CASES])
def test_without_an_answer_after_the_point_of_no_return_nothing_is_touched(method):
    phase = {"stateful": "restore", "cold": "target boot"}.get(method, "hand-over")
    decided = after_failure(FAILED, plan(method), source("switchover"), UNREACHABLE, phase, MOVE)
    assert decided["outcome"] == "unknown"
    assert not any(decided[key] for key in ("clean_target", "cancel_source", "restart_source", "retire_source",
                                            "remove_source_state"))


def test_without_an_answer_before_the_point_of_no_return_the_source_resumes_and_the_target_is_left():
    decided = after_failure(FAILED, plan("live-mirror"), source("started"), UNREACHABLE, "disk mirror", MOVE)
    assert decided["cancel_source"] is True and decided["clean_target"] is False and decided["receivers"] == []


def test_first_failure_is_the_result_itself_without_a_failed_item():
    result = {"failed": True, "msg": "all", "results": [{"failed": False}]}
    assert first_failure(result) is result
