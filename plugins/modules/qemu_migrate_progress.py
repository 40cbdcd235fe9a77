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
    its latest progress sample every second to C(<run_dir>/<name>/progress.json) (replacing the file atomically);
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

from ansible_collections.livemig.qemu.plugins.module_utils import _progress
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec


def main() -> None:
    run_module(vm_argument_spec(wait={"type": "float", "default": 3}, since={"type": "float"}), _progress.run,
               needs_qmp=False, supports_check_mode=True)


if __name__ == "__main__":
    main()
