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
    ("target paused", RUNNING_OWNER, {"owner": False, "status": "paused", "running": True}, "refuse",
     "Cannot migrate web1 from hv1 to hv2: the target already runs that VM (paused)"),
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
    assert found["show_plan"] is (kind == "start")
    if kind == "refuse":
        assert found["message"] == f"Cannot migrate web1 from hv1 to hv2: {found['reason']}"


RECEIVERS = [{"label": "root", "path": "/img/b/web1-root.qcow2"}, {"label": "state", "path": "/img/b/web1.state"}]


def plan(method):
    return {"vm": "web1", "source": "hv1", "target": "hv2", "method": method, "receivers": RECEIVERS}


def target(status):
    return {"vms": {"web1": {"status": status}}} if status else {"vms": {}}


KEEPS = "It keeps running on hv1; the target was cleaned up."
RAN = "The VM ran on hv2, so the source will not be resumed: finish the hand-over by running the migrate playbook again."
POST_COPY = ("The VM runs on hv2 in post-copy and still needs memory held by hv1: stop neither QEMU; once the migration "
             "link works again, resume the post-copy (migrate-recover on hv2, migrate with resume on hv1; see "
             "livemig.qemu.qemu_migrate).")
LOOP = {"failed": True, "msg": "One or more items failed",
        "results": [{"failed": False, "msg": "ok"}, {"failed": True, "msg": "the mirror of disk-root failed"},
                    {"failed": True, "msg": "second"}]}

# Each row: id, failed result, method, target status after the failure, may have run, message tail, failure text.
FAILURE_CASES = [
    ("target gone", {"failed": True, "msg": "no data moved"}, "live-mirror", None, False, KEEPS, "no data moved"),
    ("target never started", {"failed": True, "msg": "x"}, "live-mirror", "inmigrate", False, KEEPS, "x"),
    ("target running, no word from the module", {"failed": True, "msg": "x"}, "live-mirror", "running", True, RAN,
     "x"),
    ("target paused", {"failed": True, "msg": "x"}, "live-mirror", "paused", True, RAN, "x"),
    ("target suspended", {"failed": True, "msg": "x"}, "stateful", "suspended", True, RAN, "x"),
    ("the module says it may have run, the target looks dead",
     {"failed": True, "msg": "x", "target_may_have_run": True}, "live-mirror", None, True, RAN, "x"),
    ("the module says it never ran, the target looks alive",
     {"failed": True, "msg": "x", "target_may_have_run": False}, "live-mirror", "running", False, KEEPS, "x"),
    ("post-copy by the module's phase",
     {"failed": True, "msg": "the link failed", "phase": "post-copy", "target_may_have_run": True}, "live-mirror",
     "running", True, POST_COPY, "the link failed"),
    ("post-copy in the text only is not post-copy", {"failed": True, "msg": "lost in post-copy"}, "live-mirror",
     "running", True, RAN, "lost in post-copy"),
    ("a loop: its first failed item", LOOP, "live-mirror", None, False, KEEPS, "the mirror of disk-root failed"),
    ("a loop item says the target may have run",
     {"failed": True, "results": [{"failed": True, "msg": "y", "target_may_have_run": True}]}, "cold", None, True,
     RAN, "y"),
    ("no message", {"failed": True}, "cold", None, False, KEEPS, "unknown error"),
]


@pytest.mark.parametrize("result,method,status,ran,tail,failure", [case[1:] for case in FAILURE_CASES],
                         ids=[case[0] for case in FAILURE_CASES])
def test_after_failure(result, method, status, ran, tail, failure):
    decided = after_failure(result, plan(method), target(status), "disk mirror")
    assert decided["target_may_have_run"] is ran
    assert decided["failure"] == failure
    assert decided["message"] == (f"{method.capitalize()} migration of web1 from hv1 to hv2 failed in the disk mirror "
                                  f"phase: {failure}. {tail}")


# Each row: method, what is undone when the target never ran: cancel, restart, remove the state file.
UNDO_CASES = [
    ("live-mirror", True, False, False),
    ("live-shared", True, False, False),
    ("stateful", True, False, True),
    ("cold", False, True, False),
]


@pytest.mark.parametrize("method,cancel,restart,remove_state", UNDO_CASES)
def test_what_is_undone_by_method(method, cancel, restart, remove_state):
    decided = after_failure({"failed": True, "msg": "x"}, plan(method), target(None), "copy")
    assert (decided["clean_target"], decided["receivers"]) == (True, RECEIVERS)
    assert (decided["cancel_source"], decided["restart_source"], decided["remove_source_state"]) == \
        (cancel, restart, remove_state)


@pytest.mark.parametrize("method", [case[0] for case in UNDO_CASES])
def test_nothing_is_undone_once_the_target_may_have_run(method):
    decided = after_failure({"failed": True, "msg": "x"}, plan(method), target("running"), "copy")
    assert decided["clean_target"] is False and decided["receivers"] == []
    assert not (decided["cancel_source"] or decided["restart_source"] or decided["remove_source_state"])


def test_target_facts_may_be_missing():
    assert after_failure({"msg": "x"}, plan("cold"), None, "shutdown")["target_may_have_run"] is False


def test_first_failure_is_the_result_itself_without_a_failed_item():
    result = {"failed": True, "msg": "all", "results": [{"failed": False}]}
    assert first_failure(result) is result
