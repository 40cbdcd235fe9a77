# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A migration's progress file: the sample format, writing it, reading it, and the line a person reads.

Private to the livemig.qemu collection. qemu_migrate writes the latest sample, ten times a second, to
`<run_dir>/<name>/progress.json`, replacing the file atomically (it holds that one sample and the last few actions,
so it stays small); qemu_migrate_progress reads it without talking to QEMU, so it never competes with the migration
for a monitor.
"""
from __future__ import annotations

import json
import time
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files
from ansible_collections.livemig.qemu.plugins.module_utils._convergence import mib_s
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError

MIB = 1 << 20
SAMPLE_KEYS = ("t", "phase", "status", "remaining", "total", "transferred", "mbps", "dirty_rate", "passes",
               "throttle", "expected_downtime", "downtime_limit_ms", "disk_remaining", "disk_total")
RECENT_ACTIONS = 5  # the last policy actions a progress file shows
POLL_INTERVAL = 0.2
WAITING = "waiting for the migration to start"


class ProgressFileError(LivemigError):
    """The progress file exists but cannot be used."""


# -- the sample --------------------------------------------------------------------------------

def sample(info: dict[str, Any], elapsed: float, phase: str = "pre-copy", downtime_limit_ms: int | None = None,
           disk: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """One point of the progress history, from a query-migrate answer and (remaining, total) of the disk mirrors."""
    ram = info.get("ram", {})
    page_size = ram.get("page-size", 4096)
    return {"t": round(elapsed, 3), "phase": phase, "status": info.get("status"),
            "remaining": ram.get("remaining"), "total": ram.get("total"), "transferred": ram.get("transferred"),
            "mbps": ram.get("mbps"), "dirty_rate": ram.get("dirty-pages-rate", 0) * page_size,
            "passes": ram.get("dirty-sync-count"), "throttle": info.get("cpu-throttle-percentage", 0),
            "expected_downtime": info.get("expected-downtime"), "downtime_limit_ms": downtime_limit_ms,
            "disk_remaining": disk[0], "disk_total": disk[1]}


def describe(action: dict[str, Any]) -> str:
    """A policy action as one line for a person: '12.0s downtime-limit=200 (why)'."""
    if action["action"] == "set-parameters":
        what = " ".join(f"{name}={mib_s(value) if name == 'max-bandwidth' else value}"
                        for name, value in action["parameters"].items())
    else:
        what = action["action"]
    return f"{action['t']:.1f}s {what} ({action['reason']})"


def completion(statistics: dict[str, Any]) -> str:
    """How a completed migration went, for the progress file's last message."""
    text = f"completed in {statistics['total_time_ms']} ms, downtime {statistics['downtime_ms']} ms"
    if statistics["postcopy_started"]:
        text += f", post-copy {statistics['postcopy_time_ms']} ms"
    return text


# -- the file ----------------------------------------------------------------------------------

def write(path: str, point: dict[str, Any], actions: list[dict[str, Any]], epoch: float,
          outcome: str | None = None, message: str | None = None) -> None:
    """Replace the progress file with `point` (its time made epoch seconds), the last actions and, once the
    migration has ended, its outcome. A progress file must never fail the migration: write errors are ignored."""
    data = {**point, "t": round(epoch + point["t"], 3), "finished": outcome is not None,
            "policy_actions": [describe(action) for action in actions[-RECENT_ACTIONS:]]}
    if outcome is not None:
        data.update(outcome=outcome, message=message)
    try:
        _files.atomic_write(path, json.dumps(data), durable=False)
    except OSError:
        pass


def read(path: str) -> dict[str, Any] | None:
    """The sample in the progress file; None when there is no file yet."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProgressFileError(f"cannot read the progress file {path}: {exc.strerror}") from exc
    try:
        found = json.loads(text)
    except ValueError as exc:
        raise ProgressFileError(f"the progress file {path} is not valid JSON ({exc}); qemu_migrate replaces it "
                                "atomically, so something else wrote it") from exc
    if not isinstance(found, dict):
        raise ProgressFileError(f"the progress file {path} holds a JSON {type(found).__name__}, not an object")
    return found


def latest(path: str, wait: float, since: float | None) -> dict[str, Any] | None:
    """Read the progress file until it says finished or `wait` seconds have passed; return the last sample."""
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        found = read(path)
        if found is not None and since is not None and (_number(found.get("t")) or 0.0) < since:
            found = None
        if found is not None and found.get("finished"):
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            return found
        time.sleep(min(POLL_INTERVAL, left))


# -- the line ----------------------------------------------------------------------------------

def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _plain(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"


# The figures of a sample shown after RAM's, each when the sample has it.
FIGURES = (("mbps", lambda value: f"{value:.1f} Mbit/s"),
           ("dirty_rate", lambda value: f"guest dirties {value / MIB:.1f} MiB/s"),
           ("throttle", lambda value: f"throttle {_plain(value)}%"),
           ("downtime_limit_ms", lambda value: f"downtime limit {_plain(value)} ms"))


def _ram_figures(point: dict[str, Any]) -> list[str]:
    figures = []
    remaining, total = _number(point.get("remaining")), _number(point.get("total"))
    if remaining is not None and total:
        figures.append(f"RAM {round(100 * remaining / total)}% left ({_mib(remaining)} of {_mib(total)})")
    elif remaining is not None:
        figures.append(f"RAM {_mib(remaining)} left")
    for key, render in FIGURES:
        value = _number(point.get(key))
        if value is not None:
            figures.append(render(value))
    return figures


def line(point: dict[str, Any] | None) -> str:
    """One human line for a progress sample."""
    if not point:
        return WAITING
    head = str(point.get("phase") or point.get("status") or "migration")
    passes = _number(point.get("passes"))
    if passes:
        head += f" pass {int(passes)}"
    figures = _ram_figures(point)
    parts = [f"{head}: {', '.join(figures)}" if figures else head]
    disk_remaining = _number(point.get("disk_remaining"))
    if disk_remaining is not None:
        parts.append(f"disks {_mib(disk_remaining)} left")
    actions = point.get("policy_actions")
    if isinstance(actions, list) and actions:
        parts.append(f"last action: {actions[-1]}")
    message = point.get("message")
    finished = bool(point.get("finished"))
    if message and not finished:
        parts.append(str(message))
    text = "; ".join(parts)
    if finished:
        outcome = f"migration {point.get('outcome') or 'finished'}"
        if message:
            outcome += f": {message}"
        text = f"{outcome}; last sample: {text}"
    return text


# -- the module --------------------------------------------------------------------------------

def run(task: Any) -> dict[str, Any]:
    """qemu_migrate_progress: the latest sample of the VM's migration from this host, and its line."""
    path = task.paths.progress
    try:
        found = latest(path, task.params["wait"], task.params["since"])
    except ProgressFileError as exc:
        exc.details["path"] = path
        raise
    output: dict[str, Any] = {"changed": False, "path": path, "progress": found or {}, "started": found is not None,
                              "finished": bool(found and found.get("finished")), "line": line(found)}
    sampled_at = _number((found or {}).get("t"))
    if sampled_at is not None:
        output["age"] = round(max(time.time() - sampled_at, 0.0), 3)
    return output
