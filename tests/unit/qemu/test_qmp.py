from __future__ import annotations

import os
import signal
import time

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._qmp import (
    QMPError, QMPSession, QMPTimeout, event_time)


@pytest.fixture
def idle(qemu):
    """A QEMU with no machine, paused: enough for plain QMP."""
    return qemu("idle", "-machine", "none", "-S")


@pytest.fixture
def pc(qemu):
    """A small paused PC, so that cont and stop really change the run state."""
    return qemu("pc", "-machine", "pc", "-m", "32", "-S")


# -- pure helpers ----------------------------------------------------------------------------

def test_qmp_error_text_names_command_and_class():
    assert str(QMPError("boom")) == "boom"
    assert str(QMPError("boom", "migrate")) == "migrate: boom"
    assert str(QMPError("boom", "migrate", "GenericError")) == "migrate: boom (GenericError)"
    timeout = QMPTimeout("late", "query-status")
    assert isinstance(timeout, QMPError) and timeout.command == "query-status" and timeout.error_class is None


def test_event_time():
    assert event_time({"event": "STOP", "timestamp": {"seconds": 1700000000, "microseconds": 250000}}) \
        == pytest.approx(1700000000.25)
    assert event_time({"event": "STOP"}) == 0
    assert event_time({"event": "STOP", "timestamp": None}) == 0


# -- a real monitor --------------------------------------------------------------------------

def test_connect_and_query_version(idle):
    with QMPSession(idle.qmp, connect_timeout=5) as session:
        version = session.execute("query-version")
        assert version["qemu"]["major"] >= 10
        assert set(version["qemu"]) >= {"major", "minor", "micro"}
        assert session.execute("query-status")["status"] == "prelaunch"


def test_unknown_command_raises_qmp_error(idle):
    with QMPSession(idle.qmp, connect_timeout=5) as session:
        with pytest.raises(QMPError) as caught:
            session.execute("no-such-command")
        assert not isinstance(caught.value, QMPTimeout)
        assert caught.value.command == "no-such-command"
        assert caught.value.error_class == "CommandNotFound"
        assert "no-such-command" in str(caught.value)
        assert "CommandNotFound" in str(caught.value)
        # The session stays usable after a command error.
        assert session.execute("query-status")["status"] == "prelaunch"


def test_bad_arguments_raise_generic_error(idle):
    with QMPSession(idle.qmp, connect_timeout=5) as session:
        with pytest.raises(QMPError) as caught:
            session.execute("query-named-block-nodes", {"flat": "yes"})
        assert caught.value.command == "query-named-block-nodes"
        assert caught.value.error_class == "GenericError"


def test_subscription_gets_resume_and_stop(pc):
    with QMPSession(pc.qmp, connect_timeout=5) as session:
        with session.subscribe(["RESUME"]) as events:
            before = time.time()
            session.execute("cont")
            event = events.wait(None, time.monotonic() + 5, "RESUME")
        assert event["event"] == "RESUME"
        assert event_time(event) > 0
        assert before - 5 < event_time(event) < time.time() + 5
        assert session.execute("query-status")["status"] == "running"

        with session.subscribe(["STOP"]) as events:
            session.execute("stop")
            event = events.wait(None, time.monotonic() + 5, "STOP")
        assert event["event"] == "STOP"
        assert event_time(event) > 0
        assert session.execute("query-status")["status"] == "paused"


def test_subscription_only_queues_its_own_names(pc):
    with QMPSession(pc.qmp, connect_timeout=5) as session:
        with session.subscribe(["STOP"]) as stops, session.subscribe(["STOP", "RESUME"]) as both:
            session.execute("cont")
            assert both.get(5)["event"] == "RESUME"
            assert stops.get(0.3) is None
            session.execute("stop")
            assert stops.get(5)["event"] == "STOP"
            assert both.get(5)["event"] == "STOP"


def test_subscription_wait_skips_events_the_filter_refuses(pc):
    with QMPSession(pc.qmp, connect_timeout=5) as session:
        with session.subscribe(["STOP", "RESUME"]) as events:
            session.execute("cont")
            session.execute("stop")
            event = events.wait(lambda e: e["event"] == "STOP", time.monotonic() + 5, "STOP")
            assert event["event"] == "STOP"
            assert events.get(0.2) is None


def test_subscription_wait_times_out_at_the_deadline(idle):
    with QMPSession(idle.qmp, connect_timeout=5) as session:
        with session.subscribe(["RESUME"]) as events:
            started = time.monotonic()
            with pytest.raises(QMPTimeout, match="timed out waiting for the resume"):
                events.wait(None, started + 0.4, "the resume")
            elapsed = time.monotonic() - started
        assert 0.35 <= elapsed < 1.0
        started = time.monotonic()
        with session.subscribe(["RESUME"]) as events:
            assert events.get(0.2) is None
        assert 0.15 <= time.monotonic() - started < 1.0
        # A deadline already in the past fails at once.
        with session.subscribe(["RESUME"]) as events:
            started = time.monotonic()
            with pytest.raises(QMPTimeout):
                events.wait(None, started - 1, "the resume")
            assert time.monotonic() - started < 0.2


def test_connect_to_a_missing_socket_times_out(tmp_path):
    path = str(tmp_path / "absent.qmp")
    session = QMPSession(path, connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(QMPTimeout) as caught:
        session.connect()
    elapsed = time.monotonic() - started
    session.close()
    assert 0.45 <= elapsed < 2.0
    assert path in str(caught.value)


def test_second_client_waits_while_the_monitor_is_busy(idle):
    first = QMPSession(idle.qmp, connect_timeout=5).connect()
    try:
        second = QMPSession(idle.qmp, connect_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(QMPTimeout, match="monitor is busy"):
            second.connect()
        elapsed = time.monotonic() - started
        second.close()
        assert 0.45 <= elapsed < 2.5
        # The first client is not disturbed by the attempt.
        assert first.execute("query-status")["status"] == "prelaunch"
    finally:
        first.close()
    with QMPSession(idle.qmp, connect_timeout=5) as third:
        assert third.execute("query-status")["status"] == "prelaunch"


def test_execute_after_qemu_is_killed_raises_qmp_error(idle):
    session = QMPSession(idle.qmp, connect_timeout=5).connect()
    try:
        assert session.execute("query-status")["status"] == "prelaunch"
        idle.kill()
        for _attempt in range(2):  # the first call sees the disconnect, the second a disconnected client
            with pytest.raises(QMPError) as caught:
                session.execute("query-status", timeout=5)
            assert type(caught.value) in (QMPError, QMPTimeout)
            assert caught.value.command == "query-status"
    finally:
        session.close()


def test_execute_times_out_when_qemu_does_not_answer(idle):
    with QMPSession(idle.qmp, connect_timeout=5) as session:
        os.kill(idle.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(QMPTimeout) as caught:
                session.execute("query-status", timeout=0.3)
            assert 0.25 <= time.monotonic() - started < 1.5
            assert caught.value.command == "query-status"
        finally:
            os.kill(idle.process.pid, signal.SIGCONT)
        # The late answer to the abandoned command is not taken for the answer to the next one.
        assert session.execute("query-version", timeout=5)["qemu"]["major"] >= 10
        assert session.execute("query-status", timeout=5)["status"] == "prelaunch"
