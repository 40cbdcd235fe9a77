"""Record the QMP exchange of a migration with a real QEMU, and replay it without one, in milliseconds.

`Recorder(session)` wraps a real QMPSession: every command with its arguments and its answer or error, every
subscription and every result of its `get()` (an event, or None for a wait that timed out) go into the recording,
each with its time in seconds since the start (when the answer came). `save(path)` writes it as JSON.

`ReplaySession(recording)` stands in for that session. The rules of a replay:
- A command that changes something (any but `query-*`) must come in the recorded order, with the recorded
  arguments; anything else is refused with ReplayMismatch (an AssertionError) naming the expected and the actual
  command. It gets the recorded answer, or raises the recorded error.
- The answers of each query (a name with its arguments) are served in the recorded order. Timing differs between
  runs, so a query asked more often than recorded gets the latest answer again; one never recorded is refused.
- A subscription gets the recorded one of the same event names, in order. Its `get()` calls get the recorded
  results in order; past them, a `get()` waits out its timeout and returns None.
- A virtual clock replaces `time` in every module_util of the collection (`patch_time`): time.monotonic starts at
  0 (the recording's start), time.time at the recorded epoch. Each recorded answer or event served moves the clock
  to its time; sleep() and waits past the recording move it by their length. The clock never goes back, so the code
  sees the times it saw when recorded, and a recording of 20 s replays in milliseconds. A replay still running
  OVERRUN seconds after the recording's end is refused.
- `verify()` at the end fails if anything was refused, or a recorded command was never sent.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict, deque
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._migration import (
    MigrationFailed, MigrationSettings, SourceMigration)
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPTimeout, Subscription

RECORDINGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recordings")
MODULE_UTILS = "ansible_collections.livemig.qemu.plugins.module_utils."
OVERRUN = 120.0


class ReplayMismatch(AssertionError):
    """The code under test did something the recording did not."""


def load(name: str) -> dict[str, Any]:
    with open(os.path.join(RECORDINGS, f"{name}.json"), encoding="utf-8") as handle:
        return json.load(handle)


def migrate(session: Any, settings: dict[str, Any]) -> Any:
    """SourceMigration(...).run(): its statistics, or the MigrationFailed it raised."""
    try:
        return SourceMigration(session, MigrationSettings(**settings)).run()
    except MigrationFailed as failure:
        return failure


def replay_migration(recording: dict[str, Any], monkeypatch: Any) -> tuple[Any, ReplaySession]:
    """A migration with the recorded settings against a replay: (its statistics or failure, the session)."""
    session = ReplaySession(recording)
    session.patch_time(monkeypatch)
    result = migrate(session, recording["settings"])
    session.verify()
    return result, session


def outcome(result: Any) -> dict[str, Any]:
    """What a migration came to, without its times: kept in a recording, compared with its replay's."""
    if isinstance(result, MigrationFailed):
        return {"phase": result.phase, "source_running": result.source_running, "cause": result.cause}
    actions = [[action["action"], action.get("parameters")] for action in result["policy_actions"]]
    return {**{key: result[key] for key in ("status", "downtime_ms", "total_time_ms", "passes", "postcopy_started",
                                            "mirror_processed_bytes")}, "policy_actions": actions}


def is_query(command: str) -> bool:
    return command.startswith("query-")


def plain(value: Any) -> Any:
    """A JSON copy: tuples become lists, and the code under test cannot change the recording."""
    return json.loads(json.dumps(value))


def describe(command: str, arguments: Any) -> str:
    return f"{command} {json.dumps(arguments, sort_keys=True)}"


class Events:
    """What a subscription offers besides get(): QMPSession's own wait(), and closing by `with`."""
    wait = Subscription.wait

    def close(self) -> None:
        pass

    def __enter__(self) -> Events:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Recorder:
    def __init__(self, session: Any, **header: Any):
        self.session = session
        self.header = {**header, "epoch": time.time()}
        self.exchanges: list[dict[str, Any]] = []
        self._start = time.monotonic()

    def note(self, **entry: Any) -> None:
        self.exchanges.append(plain({"t": round(time.monotonic() - self._start, 6), **entry}))

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        try:
            answer = self.session.execute(command, arguments, timeout)
        except QMPError as exc:
            self.note(command=command, arguments=arguments or None, error={
                "message": exc.args[0], "class": exc.error_class, "timeout": isinstance(exc, QMPTimeout)})
            raise
        self.note(command=command, arguments=arguments or None, answer=answer)
        return answer

    def subscribe(self, names: Any) -> RecordedEvents:
        sub = sum("subscribe" in entry for entry in self.exchanges)
        self.note(subscribe=sorted(names), sub=sub)
        return RecordedEvents(self, self.session.subscribe(names), sub)

    def save(self, path: str, **header: Any) -> None:
        """The header's fields, then one exchange a line."""
        head = json.dumps({**self.header, **header}, indent=1)[:-2]  # without its closing "\n}"
        body = ",\n".join(json.dumps(entry) for entry in self.exchanges)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f'{head},\n "exchanges": [\n{body}\n]}}\n')


class RecordedEvents(Events):
    def __init__(self, recorder: Recorder, subscription: Any, sub: int):
        self.recorder, self.subscription, self.sub = recorder, subscription, sub

    def get(self, timeout: float) -> dict[str, Any] | None:
        event = self.subscription.get(timeout)
        self.recorder.note(sub=self.sub, event=event)
        return event

    def close(self) -> None:
        self.subscription.close()


class VirtualClock:
    def __init__(self, epoch: float, end: float):
        self.now, self.epoch, self.end = 0.0, epoch, end

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + self.now

    def sleep(self, seconds: float) -> None:
        self.advance(self.now + seconds)

    def advance(self, to: float) -> None:
        if to > self.end:
            raise ReplayMismatch(f"the code still runs {OVERRUN:g}s after the end of the recording")
        self.now = max(self.now, to)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class ReplaySession:
    def __init__(self, recording: dict[str, Any]):
        entries = recording["exchanges"]
        self.clock = VirtualClock(recording["epoch"], entries[-1]["t"] + OVERRUN)
        self.expected = deque(entry for entry in entries if "command" in entry and not is_query(entry["command"]))
        self.answers: dict[str, deque] = defaultdict(deque)
        self.results: dict[int, deque] = defaultdict(deque)
        self.subscriptions = [entry for entry in entries if "subscribe" in entry]
        for entry in entries:
            if "command" in entry and is_query(entry["command"]):
                self.answers[describe(entry["command"], entry["arguments"])].append(entry)
            elif "event" in entry:
                self.results[entry["sub"]].append(entry)
        self.latest: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, Any]] = []  # (command, arguments) sent and (EVENT, data) delivered, in order
        self.problems: list[str] = []

    def refuse(self, problem: str) -> None:
        self.problems.append(problem)
        raise ReplayMismatch(problem)

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        arguments = plain(arguments or None)
        if is_query(command):
            key = describe(command, arguments)
            if self.answers[key]:
                self.latest[key] = self.answers[key].popleft()
            entry = self.latest.get(key) or self.refuse(f"replay: {key} was never asked in the recording")
        else:
            entry = self.expected.popleft() if self.expected else None
            if entry is None or (entry["command"], entry["arguments"]) != (command, arguments):
                wanted = "the end of the recording" if entry is None else describe(entry["command"],
                                                                                   entry["arguments"])
                self.refuse(f"replay: expected {wanted}, got {describe(command, arguments)}")
            self.log.append((command, arguments))
        self.clock.advance(entry["t"])
        if "error" in entry:
            error = entry["error"]
            raise (QMPTimeout if error["timeout"] else QMPError)(error["message"], command, error["class"])
        return plain(entry["answer"])

    def subscribe(self, names: Any) -> ReplayedEvents:
        names = sorted(names)
        match = next((entry for entry in self.subscriptions if entry["subscribe"] == names), None)
        if match is None:
            self.refuse(f"replay: a subscription to {names} that the recording does not have")
        self.subscriptions.remove(match)
        return ReplayedEvents(self, self.results[match["sub"]])

    def patch_time(self, monkeypatch: Any) -> None:
        for name, module in list(sys.modules.items()):
            if name.startswith(MODULE_UTILS) and getattr(module, "time", None) is time:
                monkeypatch.setattr(module, "time", self.clock)

    def verify(self) -> None:
        if self.problems:
            raise ReplayMismatch(self.problems[0])
        if self.expected:
            raise ReplayMismatch("replay: these recorded commands were never sent: "
                                 + "; ".join(describe(entry["command"], entry["arguments"]) for entry in self.expected))


class ReplayedEvents(Events):
    def __init__(self, session: ReplaySession, results: deque):
        self.session, self.results = session, results

    def get(self, timeout: float) -> dict[str, Any] | None:
        clock = self.session.clock
        if not self.results:
            clock.advance(clock.now + max(timeout, 0.0))
            return None
        entry = self.results.popleft()
        clock.advance(entry["t"])
        if entry["event"] is not None:
            self.session.log.append((entry["event"]["event"], entry["event"].get("data")))
        return plain(entry["event"])
