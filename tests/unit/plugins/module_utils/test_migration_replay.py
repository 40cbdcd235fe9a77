"""The source state machine's decisions, replayed from exchanges recorded with QEMU 10 (see replay.py for the rules,
record_exchanges.py for how each recording was made). No QEMU runs here."""
from __future__ import annotations

import copy

import pytest
from replay import ReplayMismatch, ReplaySession, load, outcome, replay_migration

from ansible_collections.livemig.qemu.plugins.module_utils._migration import MigrationFailed

MIRROR_JOB = "livemig-mirror-disk-root"


def commands(session):
    """The commands that change something, in the order the state machine sent them."""
    return [name for name, unused_arguments in session.log if not name.isupper()]


def sent(session, command):
    return [arguments for name, arguments in session.log if name == command]


def capabilities(session):
    (arguments,) = sent(session, "migrate-set-capabilities")
    return {item["capability"]: item["state"] for item in arguments["capabilities"]}


def last_answer(recording, command):
    return [entry for entry in recording["exchanges"] if entry.get("command") == command][-1]["answer"]


@pytest.fixture
def replay(monkeypatch):
    """Replay a recording: (the recording, the statistics or the MigrationFailed, the replay session)."""
    def run(name, derive=None):
        recording = load(name) if derive is None else derive(load(name))
        result, session = replay_migration(recording, monkeypatch)
        assert outcome(result) == recording["outcome"], "the replay came to another end than the recorded run"
        return recording, result, session
    return run


def test_a_migration_without_disks_completes_with_qemus_statistics(replay):
    recording, stats, session = replay("completes")
    final = last_answer(recording, "query-migrate")
    assert stats["status"] == "completed" and final["status"] == "completed"
    assert (stats["downtime_ms"], stats["total_time_ms"], stats["setup_time_ms"]) == (
        final["downtime"], final["total-time"], final["setup-time"])
    assert (stats["ram_transferred"], stats["ram_total"], stats["passes"]) == (
        final["ram"]["transferred"], final["ram"]["total"], final["ram"]["dirty-sync-count"])
    assert stats["query_migrate"] == final and stats["policy_actions"] == [] and stats["postcopy_started"] is False
    assert stats["mirror_processed_bytes"] == 0 and stats["source_stop_time"] <= stats["completed_time"]
    # Paused before the switchover without disks too: the point of no return is marked before the device state.
    assert commands(session) == ["migrate-set-capabilities", "migrate-set-parameters", "migrate", "migrate-continue"]
    assert capabilities(session) == {"events": True, "pause-before-switchover": True}
    assert sent(session, "migrate-set-parameters")[0]["downtime-limit"] == 100  # auto starts low


def test_the_mirrors_are_finished_before_migrate_continue(replay):
    recording, stats, session = replay("mirror")
    steps = [(name, (arguments or {}).get("status")) for name, arguments in session.log]
    assert capabilities(session)["pause-before-switchover"] is True
    paused = steps.index(("MIGRATION", "pre-switchover"))
    cancel = steps.index(("block-job-cancel", None))
    finished = steps.index(("BLOCK_JOB_COMPLETED", None))
    continued = steps.index(("migrate-continue", None))
    assert paused < cancel < finished < continued < steps.index(("MIGRATION", "completed"))
    assert sent(session, "block-job-cancel") == [{"device": MIRROR_JOB}]  # graceful: no force, no complete
    assert sent(session, "migrate-continue") == [{"state": "pre-switchover"}]
    assert stats["status"] == "completed"
    assert stats["mirror_processed_bytes"] == session.log[finished][1]["offset"] > 0
    assert stats["source_stop_time"] <= stats["pre_switchover_time"] <= stats["mirrors_done_time"]
    assert "migrate_cancel" not in commands(session) and "cont" not in commands(session)
    assert recording["outcome"]["status"] == "completed"


def test_the_policy_raises_the_downtime_limit_then_aborts(replay):
    unused_recording, failure, session = replay("stalled")
    assert isinstance(failure, MigrationFailed)
    assert failure.phase == "pre-copy" and failure.source_running is True and failure.target_may_have_run is False
    assert "pre-copy cannot converge" in failure.cause and "downtime limit 300 ms" in failure.cause
    assert commands(session) == ["migrate-set-capabilities", "migrate-set-parameters", "migrate",
                                 "migrate-set-parameters", "migrate-set-parameters", "migrate_cancel"]
    assert sent(session, "migrate-set-parameters")[1:] == [{"downtime-limit": 200}, {"downtime-limit": 300}]
    actions = failure.stats["policy_actions"]
    assert [action["action"] for action in actions] == ["set-parameters", "set-parameters", "abort"]
    assert [action["t"] for action in actions] == sorted(action["t"] for action in actions)
    assert failure.stats["history"][-1]["downtime_limit_ms"] == 300 and failure.stats["status"] == "cancelled"


def test_a_rollback_before_the_device_state_cancels_and_keeps_the_source(replay):
    """QEMU 10 restarts the source itself on migrate_cancel: the rollback checks, and sends no cont."""
    unused_recording, failure, session = replay("switchover-timeout")
    assert isinstance(failure, MigrationFailed)
    assert failure.phase == "switchover" and failure.source_running is True and failure.target_may_have_run is False
    assert f"timed out waiting for mirror completion of {MIRROR_JOB}" in failure.cause
    assert commands(session)[3:] == ["block-job-cancel", "migrate_cancel", "yank", "blockdev-del"]
    assert sent(session, "blockdev-del") == [{"node-name": "livemig-nbd-disk-root"}]
    assert failure.stats["status"] == "cancelled"


def left_paused(resumed):
    """A recording as a QEMU that leaves the source paused after the failure would give it.

    Derived here, not recorded: QEMU 10 restarts the source itself after a cancel or a failure. The first run state
    the recording asks for after `migrate` (after the failure) becomes paused; with `resumed`, the `cont` that must follow is added to
    the expected commands (the later run states say running)."""
    def derive(recording):
        recording = copy.deepcopy(recording)
        exchanges = recording["exchanges"]
        started = next(index for index, entry in enumerate(exchanges) if entry.get("command") == "migrate")
        first = next(index for index, entry in enumerate(exchanges)
                     if index > started and entry.get("command") == "query-status")
        exchanges[first] = {**exchanges[first], "answer": {"status": "paused", "running": False}}
        if resumed:
            exchanges.insert(first + 1, {"t": exchanges[first]["t"], "command": "cont", "arguments": None,
                                         "answer": {}})
        restarted = "; QEMU restarted the source VM by itself; it was paused again at once and is not resumed here"
        if restarted in recording["outcome"]["cause"]:  # a source already paused is not paused again
            recording["exchanges"] = [entry for entry in exchanges if entry.get("command") != "stop"]
            recording["outcome"]["cause"] = recording["outcome"]["cause"].replace(
                restarted, "; the source VM is paused and stays so")
        recording["outcome"]["source_running"] = resumed
        return recording
    return derive


def test_a_rollback_before_the_device_state_resumes_a_paused_source(replay):
    unused_recording, failure, session = replay("switchover-timeout", left_paused(resumed=True))
    assert commands(session)[3:] == ["block-job-cancel", "migrate_cancel", "yank", "blockdev-del", "cont"]
    assert failure.phase == "switchover" and failure.source_running is True


def test_no_resume_once_the_device_state_may_have_reached_the_target(replay):
    """The target died just after migrate-continue: QEMU restarted the source, which is paused again at once;
    nothing is cancelled or resumed."""
    recording, failure, session = replay("target-lost-after-continue")
    assert isinstance(failure, MigrationFailed) and failure.phase == "switchover" and failure.target_may_have_run
    assert "QEMU reports the migration failed" in failure.cause and "paused again at once" in failure.cause
    assert commands(session)[-3:] == ["block-job-cancel", "migrate-continue", "stop"]
    assert last_answer(recording, "query-status")["status"] == "paused"
    assert failure.source_running is False


def test_a_source_left_paused_after_migrate_continue_is_not_resumed(replay):
    unused_recording, failure, session = replay("target-lost-after-continue", left_paused(resumed=False))
    assert commands(session)[-1] == "migrate-continue"
    assert failure.phase == "switchover" and failure.source_running is False and failure.target_may_have_run


def test_a_failure_during_post_copy_never_resumes_the_source(replay):
    unused_recording, failure, session = replay("postcopy-target-lost")
    assert isinstance(failure, MigrationFailed)
    assert failure.phase == "post-copy" and failure.source_running is False and failure.target_may_have_run
    assert "postcopy-paused" in failure.cause and "never resume the source" in failure.cause
    assert commands(session)[-2:] == ["migrate-start-postcopy", "migrate-continue"]
    assert failure.stats["postcopy_started"] is True and failure.stats["policy"] == "postcopy-early"


# -- the fake itself -------------------------------------------------------------------------

def test_the_replay_refuses_a_command_out_of_order_or_with_other_arguments():
    session = ReplaySession(load("completes"))
    with pytest.raises(ReplayMismatch, match=r'expected migrate-set-capabilities \{.*\}, got migrate \{"uri"'):
        session.execute("migrate", {"uri": "tcp:127.0.0.1:1"})
    session = ReplaySession(load("completes"))
    with pytest.raises(ReplayMismatch, match=r"got migrate-set-capabilities \{\"capabilities\": \[\]\}"):
        session.execute("migrate-set-capabilities", {"capabilities": []})
    with pytest.raises(ReplayMismatch, match="query-balloon null was never asked"):
        session.execute("query-balloon")


def test_the_replay_fails_when_a_recorded_command_is_never_sent():
    session = ReplaySession(load("completes"))
    with pytest.raises(ReplayMismatch, match="never sent: migrate-set-capabilities .*; migrate-set-parameters .*; "
                                             "migrate "):
        session.verify()


def test_a_changed_decision_fails_the_replay(monkeypatch):
    """convergence=defaults instead of auto sets other parameters: the replay refuses them."""
    recording = load("completes")
    recording["settings"]["convergence"] = "defaults"
    with pytest.raises(ReplayMismatch, match='expected migrate-set-parameters .*"downtime-limit": 100.*, got '
                                             'migrate-set-parameters .*"downtime-limit": 300'):
        replay_migration(recording, monkeypatch)


def test_queries_are_served_in_order_then_the_latest_again_on_a_clock_that_follows_the_recording():
    recording = load("switchover-timeout")
    session = ReplaySession(recording)
    statuses = [session.execute("query-migrate").get("status") for _round in range(12)]
    recorded = [entry["answer"].get("status") for entry in recording["exchanges"]
                if entry.get("command") == "query-migrate"]
    assert statuses == [*recorded, *[recorded[-1]] * (12 - len(recorded))]
    assert session.clock.monotonic() == max(entry["t"] for entry in recording["exchanges"]
                                            if entry.get("command") == "query-migrate")
    session.clock.sleep(2)
    assert session.clock.time() == recording["epoch"] + session.clock.monotonic()


def test_a_rollback_leaves_a_source_paused_before_the_migration_paused(replay):
    """Derived from a real recording: the source was paused before the migration started (its first run state says
    so), and the rollback finds it paused. It cancels and cleans up, but does not resume what it did not pause."""
    def paused_from_the_start(recording):
        recording = left_paused(resumed=False)(recording)
        first = next(entry for entry in recording["exchanges"] if entry.get("command") == "query-status")
        first["answer"] = {"status": "paused", "running": False}
        return recording
    unused_recording, failure, session = replay("switchover-timeout", paused_from_the_start)
    assert commands(session)[3:] == ["block-job-cancel", "migrate_cancel", "yank", "blockdev-del"]
    assert failure.phase == "switchover" and failure.source_running is False
