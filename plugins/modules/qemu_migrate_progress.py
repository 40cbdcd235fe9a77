#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_migrate_progress
short_description: Where a running migration stands, as one line for the play's output
version_added: 0.2.0
description:
  - Runs on the source host while M(livemig.qemu.qemu_migrate) runs there under Ansible C(async). That module writes
    its latest progress sample every second to C(<run_dir>/<name>.progress.json) (replacing the file atomically);
    this one reads it.
  - Waits up to O(wait) seconds and returns the latest sample, or returns as soon as the sample says the migration
    has finished. Call it in a loop (C(until) on RV(finished)) to print progress while the migration job runs.
  - Does not talk to QEMU, so it never competes with the migration for a monitor.
  - Before the first sample is written it reports C(waiting for the migration to start); that is not an error.
    A progress file that is not a JSON object is.
  - Never changes anything.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.read_only
  - livemig.qemu.attributes.action_group
options:
  wait:
    description:
      - Seconds to wait before returning the latest sample. The module returns earlier as soon as the migration
        has finished.
      - V(0) reads the file once.
    type: float
    default: 3
  since:
    description:
      - Epoch seconds. A sample older than this (a file left by an earlier migration) counts as no sample yet.
    type: float
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Migrate RAM and switch over, in the background
  livemig.qemu.qemu_migrate:
    name: web1
    run_dir: /run/livemig
    uri: "{{ incoming.uri }}"
    disks: [root]
    target_name: hv2
  async: 3600
  poll: 0
  register: migration_job

- name: Show the migration's progress until it has finished
  livemig.qemu.qemu_migrate_progress:
    name: web1
    run_dir: /run/livemig
    wait: 3
    since: "{{ migration_started }}"
  register: progress
  until: progress.finished
  retries: 1200
  delay: 0

- name: Collect the migration's result
  ansible.builtin.async_status:
    jid: "{{ migration_job.ansible_job_id }}"
  register: migration
  until: migration.finished
  retries: 60
  delay: 1
"""

RETURN = r"""
line:
  description:
    - >-
      The latest sample as one line, for example "pre-copy pass 3: RAM 41% left (105.2 MiB of 256.0 MiB),
      950.3 Mbit/s, guest dirties 12.1 MiB/s, throttle 0%, downtime limit 100 ms; disks 0.0 MiB left;
      last action: raised downtime limit to 200 ms".
    - C(waiting for the migration to start) when there is no sample yet.
    - Once finished it starts with C(migration completed), C(migration failed) or C(migration cancelled).
  returned: success
  type: str
progress:
  description:
    - The latest sample as M(livemig.qemu.qemu_migrate) wrote it; empty when there is none yet.
    - C(t) (epoch seconds), C(phase) (C(mirror-sync), C(pre-copy), C(switchover) or C(post-copy)), C(status)
      (QEMU's migration status), C(remaining), C(total) and C(transferred) (RAM bytes), C(mbps), C(dirty_rate)
      (bytes per second), C(passes), C(throttle) (percent), C(expected_downtime), C(downtime_limit_ms),
      C(disk_remaining) and C(disk_total) (bytes), C(finished), C(outcome) (C(completed), C(failed) or
      C(cancelled), once finished), C(message) and C(policy_actions) (what the convergence policy did).
  returned: success
  type: dict
started:
  description: Whether there is a sample yet.
  returned: success
  type: bool
finished:
  description: Whether the latest sample says the migration has finished (whatever its outcome).
  returned: success
  type: bool
age:
  description: Seconds since the latest sample was written; a large value means nothing writes the file any more.
  returned: when there is a sample with a time
  type: float
path:
  description: The progress file read.
  returned: success
  type: str
"""

import json
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.livemig.qemu.plugins.module_utils._module import vm_argument_spec, vm_paths

MIB = 1 << 20
POLL_INTERVAL = 0.2
WAITING = "waiting for the migration to start"


class ProgressFileError(Exception):
    """The progress file exists but cannot be used."""


def read_sample(path: str) -> dict[str, Any] | None:
    """The sample in the progress file; None when there is no file yet."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProgressFileError(f"cannot read the progress file {path}: {exc.strerror}") from exc
    try:
        sample = json.loads(text)
    except ValueError as exc:
        raise ProgressFileError(f"the progress file {path} is not valid JSON ({exc}); qemu_migrate replaces it "
                                "atomically, so something else wrote it") from exc
    if not isinstance(sample, dict):
        raise ProgressFileError(f"the progress file {path} holds a JSON {type(sample).__name__}, not an object")
    return sample


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


def _ram_figures(sample: dict[str, Any]) -> list[str]:
    figures = []
    remaining, total = _number(sample.get("remaining")), _number(sample.get("total"))
    if remaining is not None and total:
        figures.append(f"RAM {round(100 * remaining / total)}% left ({_mib(remaining)} of {_mib(total)})")
    elif remaining is not None:
        figures.append(f"RAM {_mib(remaining)} left")
    mbps = _number(sample.get("mbps"))
    if mbps is not None:
        figures.append(f"{mbps:.1f} Mbit/s")
    dirty_rate = _number(sample.get("dirty_rate"))
    if dirty_rate is not None:
        figures.append(f"guest dirties {dirty_rate / MIB:.1f} MiB/s")
    throttle = _number(sample.get("throttle"))
    if throttle is not None:
        figures.append(f"throttle {_plain(throttle)}%")
    limit = _number(sample.get("downtime_limit_ms"))
    if limit is not None:
        figures.append(f"downtime limit {_plain(limit)} ms")
    return figures


def progress_line(sample: dict[str, Any] | None) -> str:
    """One human line for a progress sample."""
    if not sample:
        return WAITING
    head = str(sample.get("phase") or sample.get("status") or "migration")
    passes = _number(sample.get("passes"))
    if passes:
        head += f" pass {int(passes)}"
    figures = _ram_figures(sample)
    parts = [f"{head}: {', '.join(figures)}" if figures else head]
    disk_remaining = _number(sample.get("disk_remaining"))
    if disk_remaining is not None:
        parts.append(f"disks {_mib(disk_remaining)} left")
    actions = sample.get("policy_actions")
    if isinstance(actions, list) and actions:
        parts.append(f"last action: {actions[-1]}")
    message = sample.get("message")
    finished = bool(sample.get("finished"))
    if message and not finished:
        parts.append(str(message))
    line = "; ".join(parts)
    if finished:
        outcome = f"migration {sample.get('outcome') or 'finished'}"
        if message:
            outcome += f": {message}"
        line = f"{outcome}; last sample: {line}"
    return line


def latest_sample(path: str, wait: float, since: float | None) -> dict[str, Any] | None:
    """Read the progress file until it says finished or `wait` seconds have passed; return the last sample."""
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        sample = read_sample(path)
        if sample is not None and since is not None and (_number(sample.get("t")) or 0.0) < since:
            sample = None
        if sample is not None and sample.get("finished"):
            return sample
        left = deadline - time.monotonic()
        if left <= 0:
            return sample
        time.sleep(min(POLL_INTERVAL, left))


def main() -> None:
    module = AnsibleModule(
        argument_spec=vm_argument_spec(
            wait={"type": "float", "default": 3},
            since={"type": "float"},
        ),
        supports_check_mode=True,
    )
    path = vm_paths(module).progress
    try:
        sample = latest_sample(path, module.params["wait"], module.params["since"])
    except ProgressFileError as exc:
        module.fail_json(msg=str(exc), path=path)
    output: dict[str, Any] = {
        "changed": False, "path": path, "progress": sample or {}, "started": sample is not None,
        "finished": bool(sample and sample.get("finished")), "line": progress_line(sample),
    }
    sampled_at = _number((sample or {}).get("t"))
    if sampled_at is not None:
        output["age"] = round(max(time.time() - sampled_at, 0.0), 3)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
