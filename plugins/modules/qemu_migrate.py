#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_migrate
short_description: Source side of a live migration, from pre-copy through switchover
version_added: 0.1.0
description:
  - Runs on the source host. Sets the capabilities and parameters (QEMU's 128 MiB/s default bandwidth cap is
    lifted unless O(max_bandwidth) is set), starts C(migrate) to the target's URI and follows QEMU's migration
    events.
  - With mirrored disks it pauses before switchover; at that moment, with the source stopped, it finishes every
    disk mirror gracefully (the target then holds a consistent copy), lets the last RAM and device state go and
    waits until QEMU reports the migration completed. All of this happens inside this one process, reacting to
    events, so no Ansible task boundary adds to the downtime.
  - Before the switchover, any failure cancels the migration and the mirrors and leaves the VM running here.
    Once the device state may have reached the target, the source is never resumed; the failure says so.
  - On success this host's record stops owning the VM (it names the new owner); the stale source QEMU stays in
    C(postmigrate) for the caller to remove.
  - Use the job monitor, so other modules can still talk to the VM while this runs. Run it with Ansible C(async)
    to survive a lost controller connection.
extends_documentation_fragment:
  - livemig.qemu.vm
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
options:
  state:
    description:
      - V(completed) migrates the VM.
      - V(cancelled) cancels a migration still in progress and aborts the disk mirrors of O(disks). It resumes the
        VM here only if it is paused and O(target_ran=false).
    type: str
    choices: [completed, cancelled]
    default: completed
  uri:
    description: Migration URI on the target, as returned by M(livemig.qemu.qemu_migrate_incoming).
    type: str
  disks:
    description: Names of the disks mirrored with M(livemig.qemu.qemu_block_mirror); they are finished at switchover.
    type: list
    elements: str
    default: []
  target_name:
    description: Name of the target host, recorded as the new owner.
    type: str
  max_bandwidth:
    description: Bandwidth cap for RAM in bytes per second; V(0) is unlimited.
    type: int
    default: 0
  downtime_limit_ms:
    description: The longest pause QEMU may plan for the final pass, in milliseconds.
    type: int
    default: 300
  capabilities:
    description: Extra migration capabilities by name; the same ones must be set on the target.
    type: dict
    default: {}
  parameters:
    description: Extra migration parameters.
    type: dict
    default: {}
  timeout:
    description: Seconds the whole migration may take before it is cancelled.
    type: float
    default: 3600
  stall_timeout:
    description: Seconds without any RAM transferred after which the migration is cancelled (a cut link never
      fails by itself).
    type: float
    default: 60
  switchover_timeout:
    description: Seconds the final disk sync may take at switchover, while the VM is paused.
    type: float
    default: 60
  target_ran:
    description: With O(state=cancelled), whether the VM may have run on the target. When V(false) a paused VM here
      is resumed.
    type: bool
    default: true
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Migrate web1 to the target
  livemig.qemu.qemu_migrate:
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    uri: "{{ incoming.uri }}"
    disks: [root]
    target_name: hv2
  async: 3600
  poll: 2
  register: migration
"""

RETURN = r"""
statistics:
  description:
    - C(total_time_ms), C(downtime_ms), C(setup_time_ms) and C(passes) as QEMU reports them;
    - C(ram_transferred), C(ram_total) (bytes) and C(mirror_processed_bytes), the work of the disk mirror jobs
      (each disk once, plus writes copied again; empty areas cost almost nothing);
    - C(source_stop_time), C(pre_switchover_time), C(mirrors_done_time), C(completed_time) (epoch seconds);
    - C(history), one sample per second of C(status), C(remaining), C(transferred), C(mbps), C(dirty_rate),
      C(passes), C(throttle);
    - C(query_migrate), QEMU's final answer.
  returned: when a migration ran
  type: dict
phase:
  description: Where a failed migration stopped (C(setup), C(pre-copy), C(switchover)).
  returned: on failure
  type: str
source_running:
  description: Whether the VM still runs on this host after a failure.
  returned: on failure
  type: bool
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _mirror
from ansible_collections.livemig.qemu.plugins.module_utils._migration import (
    ACTIVE, PAUSED, MigrationFailed, MigrationSettings, SourceMigration, cancel_migration, resume_if_paused)
from ansible_collections.livemig.qemu.plugins.module_utils._module import new_module, qmp, vm_argument_spec, vm_paths
from ansible_collections.livemig.qemu.plugins.module_utils._state import HostRecord, load_record, save_record


def migrate(module, session, paths) -> None:
    params = module.params
    status = session.execute("query-migrate").get("status")
    if status == "completed" and session.execute("query-status")["status"] == "postmigrate":
        module.exit_json(changed=False, msg="this VM was already migrated away")
    if module.check_mode:
        module.exit_json(changed=True)
    settings = MigrationSettings(
        uri=params["uri"], mirrored_nodes=[f"disk-{disk}" for disk in params["disks"]],
        max_bandwidth=params["max_bandwidth"], downtime_limit_ms=params["downtime_limit_ms"],
        capabilities=params["capabilities"], parameters=params["parameters"], timeout=params["timeout"],
        stall_timeout=params["stall_timeout"], switchover_timeout=params["switchover_timeout"])
    try:
        statistics = SourceMigration(session, settings).run()
    except MigrationFailed as exc:
        module.fail_json(msg=f"VM {paths.vm}: {exc}", phase=exc.phase, source_running=exc.source_running,
                         statistics=exc.stats)
    record = load_record(paths.record, paths.vm) or HostRecord(vm=paths.vm)
    record.owner = False
    record.handed_over_to = params["target_name"]
    save_record(paths.record, record)
    module.exit_json(changed=True, statistics=statistics)


def cancel(module, session) -> None:
    params = module.params
    migrating = session.execute("query-migrate").get("status") in ACTIVE
    nodes = [f"disk-{disk}" for disk in params["disks"]]
    mirrors = [node for node in nodes if _mirror.find_job(session, _mirror.job_id(node))
               or _mirror.node_exists(session, _mirror.nbd_node(node))]
    resume = session.execute("query-status")["status"] in PAUSED and not params["target_ran"]
    if not (migrating or mirrors or resume):
        module.exit_json(changed=False)
    if not module.check_mode:
        cancel_migration(session)
        for node in mirrors:
            _mirror.abort(session, node)
        if resume:
            resume_if_paused(session)
    module.exit_json(changed=True, resumed=resume)


def main() -> None:
    module = new_module(
        vm_argument_spec(
            state={"type": "str", "default": "completed", "choices": ["completed", "cancelled"]},
            uri={"type": "str"},
            disks={"type": "list", "elements": "str", "default": []},
            target_name={"type": "str"},
            max_bandwidth={"type": "int", "default": 0},
            downtime_limit_ms={"type": "int", "default": 300},
            capabilities={"type": "dict", "default": {}},
            parameters={"type": "dict", "default": {}},
            timeout={"type": "float", "default": 3600},
            stall_timeout={"type": "float", "default": 60},
            switchover_timeout={"type": "float", "default": 60},
            target_ran={"type": "bool", "default": True},
        ),
        supports_check_mode=True,
        required_if=[("state", "completed", ("uri",))],
    )
    paths = vm_paths(module)
    with qmp(module, paths.job_qmp) as session:
        if module.params["state"] == "completed":
            migrate(module, session, paths)
        else:
            cancel(module, session)


if __name__ == "__main__":
    main()
