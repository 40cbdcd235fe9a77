#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_migrate
short_description: Source side of a live migration, from pre-copy through switchover
version_added: 0.2.0
description:
  - Runs on the source host. Sets the capabilities and parameters, starts C(migrate) to the target's URI and
    follows QEMU's migration events.
  - With mirrored disks it pauses before switchover; at that moment, with the source stopped, it finishes every
    disk mirror gracefully (the target then holds a consistent copy), lets the last RAM and device state go and
    waits until QEMU reports the migration completed. All of this happens inside this one process, reacting to
    events, so no Ansible task boundary adds to the downtime. A mirror that is not READY yet is waited for.
  - Ten times a second it samples the migration and the disk mirrors, applies the convergence policy O(convergence)
    and rewrites the progress file C(<run_dir>/<name>/progress.json) with the latest sample (see RV(progress_file)).
  - Before the switchover, any failure cancels the migration and the mirrors and leaves the VM running here.
    Once the device state may have reached the target, the source is never resumed; the failure says so. QEMU
    itself restarts a source whose migration failed, even then; the module pauses it again at once, so that two
    copies never run side by side, and the target's real state decides which copy is the VM.
  - "Post-copy (with C(postcopy-ram) in O(capabilities), and on the target) starts the VM on the target before all
    of its memory has arrived; the target then fetches the remaining pages from here. A failure during post-copy
    (a broken link, a dead QEMU on either side) cannot be rolled back: the guest's memory is split between the
    hosts, QEMU pauses both ends (C(postcopy-paused)) and the VM can only be recovered by resuming the post-copy
    (C(migrate-recover) on the target, C(migrate) with C(resume=true) here) once the link is back - never by
    resuming the source. Without O(recovery_uri) the module then fails with RV(phase=post-copy) and QEMU's status."
  - "With O(recovery_uri) it recovers a paused post-copy by itself: it sends C(migrate) with C(resume=true) to that
    URI once a second until QEMU has left C(postcopy-paused) or O(recovery_timeout) has passed, and then follows the
    post-copy to its end. A link that drops everything without an error (a pulled cable) would keep the post-copy
    waiting for minutes: when no byte moves for 3 seconds in post-copy, it breaks the stream itself with
    C(migrate-pause) and recovers it the same way - but not once every page has been sent (QEMU is completing then,
    a pause would fail the migration; TCP delivers the rest once the link is back). When the deadline passes it fails with RV(phase=post-copy), the
    VM paused on the target, both QEMUs kept and the source never resumed; the message says what to run to retry.
    With O(tls_dir) the recovery stream is TLS too."
  - On success this host's record stops owning the VM (it names the new owner); the stale source QEMU stays in
    C(postmigrate) for the caller to remove.
  - Use the job monitor, so other modules can still talk to the VM while this runs. Run it with Ansible C(async)
    to survive a lost controller connection.
  - With O(tls_dir) the migration stream (every multifd channel and the post-copy return path too) is TLS; the
    target must listen with TLS (M(livemig.qemu.qemu_migrate_incoming) with
    O(livemig.qemu.qemu_migrate_incoming#module:tls_dir)). Without it the stream is cleartext, also on a VM that
    was the target of a TLS move.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.vm.lock
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
  - livemig.qemu.attributes.async
  - livemig.qemu.tls
  - livemig.qemu.tls.client
options:
  state:
    description:
      - V(completed) migrates the VM.
      - V(cancelled) cancels a migration still in progress and aborts the disk mirrors of O(disks). It resumes the
        VM here only if it is paused and O(target_ran=false). It refuses a migration in post-copy.
    type: str
    choices: [completed, cancelled]
    default: completed
  uri:
    description: Migration URI on the target, as returned by M(livemig.qemu.qemu_migrate_incoming).
    type: str
  disks:
    description:
      - Names of the disks mirrored to the target; they are finished at switchover.
      - Their mirrors are started here with O(mirror), or were started before with M(livemig.qemu.qemu_block_mirror).
    type: list
    elements: str
    default: []
  mirror:
    description:
      - Start the mirror of each disk of O(disks) into the target's NBD exports first, and wait until all are in sync
        (READY) before any RAM moves, all in this one run. A mirror already running (a re-run) is kept.
      - With O(tls_dir) the mirrors connect over TLS with the same credentials and O(tls_hostname) as the migration.
      - A mirror that copies nothing for O(stall_timeout), or is not in sync after O(mirror.timeout), fails the
        run with RV(phase=mirror-sync); the mirrors are aborted and the VM keeps running here.
    type: dict
    version_added: 0.3.0
    suboptions:
      nbd_host:
        description: The target's NBD server address.
        type: str
        required: true
      nbd_port:
        description: The target's NBD server port.
        type: int
        required: true
      exports:
        description: The export name of each disk of O(disks) on the target, by disk name.
        type: dict
        required: true
      copy_mode:
        description: V(background) copies the guest's writes later; V(write-blocking) writes them to both sides at
          once (the mirror converges whatever the guest writes, its writes wait for the link).
        type: str
        choices: [background, write-blocking]
        default: background
      speed:
        description: Bytes per second each mirror may copy; V(0) is no limit.
        type: int
        default: 0
      timeout:
        description: Seconds the mirrors may take to be in sync.
        type: float
        default: 3600
  link_rate:
    description:
      - Bytes per second the link test measured before this move (RV(livemig.qemu.qemu_migration_probe#module:measurements.link_rate)).
      - With it, a completed move keeps the rate its stream achieved in C(<run_dir>/.livemig-streams/), so that
        the next prediction of a move to this target knows QEMU's own ceiling (a stream far below the link was held
        back by this host, not by the link).
    type: float
    version_added: 0.3.0
  target_name:
    description: Name of the target host, recorded as the new owner.
    type: str
  max_bandwidth:
    description:
      - Bandwidth cap in bytes per second for RAM and the disk mirrors together; V(0) is no cap.
      - While RAM is pre-copied, RAM gets what the mirrors leave of the cap (measured every sample), never less
        than a tenth of it. Post-copy gets the whole cap (C(max-postcopy-bandwidth)).
      - Without a cap RAM is unlimited, except with O(convergence=defaults), which keeps QEMU's 128 MiB/s.
    type: int
    default: 0
  downtime_limit_ms:
    description:
      - The longest pause of the guest at switchover, in milliseconds.
      - With O(convergence=auto) or V(postcopy-early) QEMU's C(downtime-limit) starts at 100 ms (or this value if
        lower) and is raised towards this value only while pre-copy does not converge. With V(defaults) it is the
        fixed limit.
    type: int
    default: 300
  convergence:
    description:
      - What to do when pre-copy does not converge (the guest dirties memory as fast as the link carries it).
      - V(auto) escalates step by step. It raises the downtime limit up to O(downtime_limit_ms); with C(auto-converge)
        in O(capabilities) it lets QEMU throttle the guest harder, up to C(max-cpu-throttle); with C(postcopy-ram)
        in O(capabilities) it switches to post-copy; otherwise it cancels the migration (the VM keeps running here) and fails
        with the measured dirty and link rates.
      - V(postcopy-early) switches to post-copy after the first full pass; needs C(postcopy-ram).
      - V(defaults) never intervenes and keeps QEMU's own bandwidth cap (a baseline for benchmarks).
    type: str
    choices: [defaults, auto, postcopy-early]
    default: auto
  capabilities:
    description:
      - Migration capabilities to switch on here besides C(events) (and C(pause-before-switchover), used with
        O(disks)), for example C(auto-converge), C(postcopy-ram), C(multifd), C(xbzrle). Any other capability
        left on by an earlier run is switched off.
      - C(postcopy-ram) and C(multifd) must also be on at the target
        (M(livemig.qemu.qemu_migrate_incoming) O(livemig.qemu.qemu_migrate_incoming#module:capabilities)).
        C(postcopy-ram) allows the switch to post-copy.
    type: list
    elements: str
    default: []
  parameters:
    description:
      - Extra C(migrate-set-parameters), for example C(multifd-channels), C(multifd-compression),
        C(xbzrle-cache-size), C(max-cpu-throttle). C(multifd-channels) and C(multifd-compression) must match the
        target's. Set C(max-bandwidth) and C(downtime-limit) with O(max_bandwidth) and O(downtime_limit_ms), and
        C(tls-creds) and C(tls-hostname) with O(tls_dir) and O(tls_hostname).
      - Names are checked against what this QEMU reports.
    type: dict
    default: {}
  timeout:
    description:
      - Seconds the whole migration may take before it is cancelled.
      - A smaller limit applies when the VM is small, 60 s plus its RAM and the disks' size at 16 MiB/s (or at half
        of O(max_bandwidth) if that is lower). RV(statistics) C(effective_timeout_s) says which, and so does the
        failure.
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
    description:
      - With O(state=cancelled), whether the VM may have run on the target. When V(false) a paused VM here is
        resumed (also one whose migration completed), and this host owns the VM again.
      - Only a caller that knows the target never let the VM run (M(livemig.qemu.qemu_migrate_incoming)
        O(livemig.qemu.qemu_migrate_incoming#module:state=aborted) says so) may pass V(false).
    type: bool
    default: true
  migration_id:
    description:
      - The move's id, kept with the phase of the move in this host's record of the VM (C(started), C(switchover) -
        written before anything that lets the target run the VM leaves this host - C(completed) or
        C(rolled-back)). A rollback trusts this record, not the target's state.
      - Generated when left out.
    type: str
  recovery_uri:
    description:
      - Where the target listens to resume a paused post-copy,
        RV(livemig.qemu.qemu_migrate_incoming#module:recovery_uri) of M(livemig.qemu.qemu_migrate_incoming); its watcher
        (O(livemig.qemu.qemu_migrate_incoming#module:state=completed)) issues C(migrate-recover) there when the
        post-copy pauses.
      - Without it a paused post-copy fails at once (and a silent link after O(stall_timeout)).
    type: str
    version_added: 0.3.0
  recovery_timeout:
    description: Seconds a paused post-copy is tried to be resumed on O(recovery_uri) before the module fails.
    type: float
    default: 120
    version_added: 0.3.0
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

- name: Mirror the local disk into the target's NBD export, then migrate, in one job
  livemig.qemu.qemu_migrate:
    name: web1
    run_dir: /run/livemig
    uri: "{{ target.incoming.uri }}"
    disks: [root]
    mirror:
      nbd_host: "{{ target.nbd.host }}"
      nbd_port: "{{ target.nbd.port }}"
      exports: "{{ target.nbd.exports }}"
    target_name: hv2
  async: 3600
  poll: 0
  register: migration_job

- name: Migrate a busy VM over a 1 Gbit/s link, with post-copy as the last resort
  livemig.qemu.qemu_migrate:
    name: db1
    run_dir: /run/livemig
    uri: "{{ incoming.uri }}"
    target_name: hv2
    max_bandwidth: 115000000
    capabilities: [auto-converge, postcopy-ram]  # postcopy-ram on the target too
  async: 3600
  poll: 2
"""

RETURN = r"""
statistics:
  description:
    - C(total_time_ms), C(downtime_ms), C(setup_time_ms) and C(passes) as QEMU reports them;
    - C(ram_transferred), C(ram_total), C(ram_postcopy_bytes) (bytes), C(postcopy_requests) (pages the target
      asked for) and C(mirror_processed_bytes), the work of the disk mirror jobs (each disk once, plus writes copied
      again; empty areas cost almost nothing);
    - C(source_stop_time), C(pre_switchover_time), C(mirrors_done_time), C(completed_time) (epoch seconds);
    - C(policy) (O(convergence)), C(policy_actions), a list of C({t, action, parameters, reason}) with C(action)
      one of C(set-parameters), C(start-postcopy), C(abort) (also the bandwidth share's C(max-bandwidth) changes);
    - C(postcopy_started) (QEMU entered post-copy), C(postcopy_time_ms) (post-copy start to completion);
    - C(recoveries), one C({paused_at, resumed_at, attempts}) per paused post-copy that was resumed (seconds since
      the start; the resume attempts sent); C(policy_actions) then also holds C(migrate-pause) (a silent link broken
      on purpose), C(postcopy-paused) and C(postcopy-resumed) (version 0.3.0);
    - C(effective_timeout_s) and C(timeout_limit) (C(timeout option) or C(size-scaled));
    - C(downtime_limit_ms) and C(max_bandwidth), the last values set;
    - C(history), ten samples a second with C(t), C(phase) (C(mirror-sync), C(pre-copy), C(switchover),
      C(post-copy)), C(status), C(remaining), C(total), C(transferred) (bytes), C(mbps), C(dirty_rate) (bytes/s),
      C(passes), C(throttle) (percent), C(expected_downtime), C(downtime_limit_ms), C(disk_remaining) and
      C(disk_total) (bytes, of the disk mirrors);
    - C(query_migrate), QEMU's final answer.
  returned: when a migration ran
  type: dict
migration_id:
  description: The move's id kept in this host's record.
  returned: when a migration completed
  type: str
progress_file:
  description:
    - The file rewritten (atomically) after every sample, C(<run_dir>/<name>/progress.json). It holds the latest
      history sample, C(finished) and C(policy_actions) (the last few actions as text); at the end C(finished) is
      true, and C(outcome) (C(completed), C(failed) or C(cancelled)) and C(message) say how it ended. Removed when
      the VM's QEMU stops.
  returned: when a migration ran
  type: str
mirrors:
  description: Each disk mirror's progress as it reached READY (C(job), C(offset), C(len), C(remaining)), with
    O(disks).
  returned: when a migration completed
  type: list
  elements: dict
  version_added: 0.3.0
mirror_history:
  description: What the disk mirrors had left to copy (C(t) epoch seconds, C(disk_remaining), C(disk_total) bytes),
    ten samples a second until all were READY.
  returned: when a migration completed
  type: list
  elements: dict
  version_added: 0.3.0
phase:
  description: Where a failed migration stopped (C(setup), C(mirror-sync), C(pre-copy), C(switchover),
    C(post-copy)). After C(post-copy) the source must not be resumed.
  returned: on failure
  type: str
source_running:
  description: Whether the VM still runs on this host after a failure.
  returned: on failure
  type: bool
target_may_have_run:
  description:
    - Whether the VM may have run on the target (the device state may have reached it, or post-copy started).
      When true, the source must never be resumed.
  returned: on failure
  type: bool
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _source
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec
from ansible_collections.livemig.qemu.plugins.module_utils._tlsqemu import CLIENT_OPTIONS


def main() -> None:
    run_module(
        vm_argument_spec(
            state={"type": "str", "default": "completed", "choices": ["completed", "cancelled"]},
            uri={"type": "str"},
            disks={"type": "list", "elements": "str", "default": []},
            mirror={"type": "dict", "options": {
                "nbd_host": {"type": "str", "required": True},
                "nbd_port": {"type": "int", "required": True},
                "exports": {"type": "dict", "required": True, "no_log": False},
                "copy_mode": {"type": "str", "default": "background", "choices": ["background", "write-blocking"]},
                "speed": {"type": "int", "default": 0},
                "timeout": {"type": "float", "default": 3600},
            }},
            target_name={"type": "str"},
            link_rate={"type": "float"},
            max_bandwidth={"type": "int", "default": 0},
            downtime_limit_ms={"type": "int", "default": 300},
            convergence={"type": "str", "default": "auto", "choices": ["defaults", "auto", "postcopy-early"]},
            capabilities={"type": "list", "elements": "str", "default": []},
            parameters={"type": "dict", "default": {}},
            timeout={"type": "float", "default": 3600},
            stall_timeout={"type": "float", "default": 60},
            switchover_timeout={"type": "float", "default": 60},
            target_ran={"type": "bool", "default": True},
            migration_id={"type": "str"},
            recovery_uri={"type": "str"},
            recovery_timeout={"type": "float", "default": 120},
            **CLIENT_OPTIONS,
        ),
        _source.run,
        supports_check_mode=True,
        required_if=[("state", "completed", ("uri",))],
        changes_vm=True,
    )


if __name__ == "__main__":
    main()
