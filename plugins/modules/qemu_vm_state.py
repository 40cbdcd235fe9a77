#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_vm_state
short_description: Save a VM's state to a file, or restore it into a QEMU waiting for it
version_added: 0.2.0
description:
  - The QMP primitive of the stateful path, on one host at a time.
  - V(saved) runs on the host where the VM runs. It stops the VM, streams its RAM and device state into O(path)
    and leaves the VM paused (C(postmigrate)), for the caller to hand it over or to resume it on rollback. The stream
    uses C(file:) when this QEMU supports it (QEMU 8.2 and later, decided from its QMP schema), else
    C(exec:cat); both write the same format, so a file saved by one QEMU loads in another where QEMU allows it.
    The data goes to C(<path>.partial), which becomes O(path) only once it is complete and on disk. On failure the
    migration is cancelled, the partial file removed and the VM resumed if it ran before.
  - V(restored) runs on the host whose QEMU waits for the VM (started with C(-incoming defer), see
    M(livemig.qemu.qemu_vm) with O(livemig.qemu.qemu_vm#module:state=incoming)). It loads O(path) and, with
    O(resume=true), starts the VM. On failure that QEMU holds no usable VM; remove it.
  - V(absent) deletes O(path) (and a leftover C(<path>.partial)); no VM needs to run.
  - Ownership records are not touched; the caller decides who owns the VM.
  - Uses the VM's job monitor (C(<run_dir>/<name>.job.qmp)), so other modules can still use the main one.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
options:
  state:
    description:
      - V(saved) saves the running (or paused) VM's state into O(path). Nothing changes when the VM is already
        paused after a completed save and O(path) holds a state.
      - V(restored) loads O(path) into this host's QEMU waiting for an incoming migration. Nothing changes when
        that QEMU already completed its incoming migration (and runs, with O(resume=true)).
      - V(absent) removes the state file.
    type: str
    choices: [saved, restored, absent]
    required: true
  path:
    description:
      - Absolute path of the state file on this host. It holds the guest's RAM; it is created with mode 0600.
      - Defaults to C(<state_dir>/<name>.state), with O(state_dir) as in the VM options.
    type: path
  timeout:
    description: Seconds the transfer of the state may take before it is abandoned.
    type: float
    default: 3600
  resume:
    description: With O(state=restored), start the VM once its state is loaded; V(false) leaves it paused.
    type: bool
    default: true
notes:
  - The file is one pass of RAM and device state taken with the VM stopped; disks are not in it. Copy the disks and the
    file to the target before O(state=restored), and start the target with the same machine type and devices.
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Save web1's state on the source (the VM stays paused)
  livemig.qemu.qemu_vm_state:
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    state: saved
  register: saved

- name: Restore it into the QEMU waiting on the target
  livemig.qemu.qemu_vm_state:
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    state: restored
    path: "{{ saved.path }}"
  delegate_to: hv2

- name: Remove the state file
  livemig.qemu.qemu_vm_state:
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    state: absent
"""

RETURN = r"""
path:
  description: The state file.
  returned: always
  type: str
  sample: /var/lib/livemig/images/web1.state
msg:
  description: What was done, or would be done in check mode, or why nothing changed.
  returned: always
  type: str
status:
  description: QEMU's run state afterwards (C(postmigrate) after a save, C(running) or C(paused) after a restore).
  returned: when O(state=saved) or O(state=restored)
  type: str
  sample: postmigrate
transport:
  description: How the state was streamed, C(file) or C(exec).
  returned: when a state was saved or restored
  type: str
  sample: file
size:
  description: Bytes in the state file.
  returned: when a state was saved or restored
  type: int
was_running:
  description: Whether the VM ran before the save (if not, it stays paused after a restore until resumed).
  returned: when a state was saved
  type: bool
stop_time:
  description: QEMU's timestamp (seconds since the epoch) of the STOP event; null when the VM was already paused.
  returned: when a state was saved
  type: float
completed_time:
  description: QEMU's timestamp (seconds since the epoch) of the completed save.
  returned: when a state was saved
  type: float
total_time_ms:
  description: The save's total time as QEMU reports it, in milliseconds.
  returned: when a state was saved
  type: int
load_time_ms:
  description: Milliseconds from C(migrate-incoming) until QEMU reported the state loaded.
  returned: when a state was restored
  type: int
resume_time:
  description: QEMU's timestamp (seconds since the epoch) of the RESUME event; null when the VM stays paused.
  returned: when a state was restored
  type: float
vm_running:
  description: Whether the VM runs on this QEMU after a failed save or restore.
  returned: on failure
  type: bool
"""

import os

from ansible_collections.livemig.qemu.plugins.module_utils import _statefile, _vmhost
from ansible_collections.livemig.qemu.plugins.module_utils._migration import ACTIVE
from ansible_collections.livemig.qemu.plugins.module_utils._module import new_module, qmp, vm_argument_spec, vm_paths


def has_state(path: str) -> bool:
    return os.path.isfile(path) and os.path.getsize(path) > 0


class VMState:
    def __init__(self, module, paths, path: str):
        self.module = module
        self.paths = paths
        self.path = path
        self.vm = paths.vm

    def done(self, changed: bool, msg: str, **result) -> None:
        self.module.exit_json(changed=changed, msg=msg, path=self.path, **result)

    def fail(self, msg: str, **result) -> None:
        self.module.fail_json(msg=f"VM {self.vm}: {msg}", path=self.path, **result)

    def session(self):
        if _vmhost.running_pid(self.paths) is None:
            self.fail(f"no QEMU of this VM runs on this host (no live pid in {self.paths.pidfile})")
        return qmp(self.module, self.paths.job_qmp)

    def saved(self) -> None:
        with self.session() as session:
            status = session.execute("query-status")["status"]
            migration = session.execute("query-migrate").get("status")
            if status == "postmigrate" and migration == "completed" and has_state(self.path):
                self.done(False, f"already saved to {self.path}; the VM stays paused", status=status)
            if migration in ACTIVE:
                self.fail(f"a migration is already {migration} on this VM; cancel it first", status=status)
            if status in ("inmigrate", "postmigrate", "finish-migrate"):
                self.fail(f"QEMU is {status}, so it holds no state of its own to save "
                          f"({'restore into it with state=restored' if status == 'inmigrate' else 'already moved'})",
                          status=status)
            if self.module.check_mode:
                self.done(True, f"would stop the VM ({status}) and save its state to {self.path}", status=status)
            try:
                result = _statefile.save_state(session, self.path, self.module.params["timeout"])
            except _statefile.StateFileError as exc:
                self.fail(str(exc), vm_running=exc.vm_running)
        self.done(True, f"saved the VM state to {self.path}; the VM is paused", **result)

    def restored(self) -> None:
        resume = self.module.params["resume"]
        with self.session() as session:
            status = session.execute("query-status")["status"]
            migration = session.execute("query-migrate").get("status")
            if status in ("running", "paused") and migration == "completed":
                if status == "running" or not resume:
                    self.done(False, f"the state was already restored; the VM is {status}", status=status)
                if self.module.check_mode:
                    self.done(True, "the state was already restored; would resume the VM", status=status)
                session.execute("cont")
                self.done(True, "the state was already restored; resumed the VM",
                          status=session.execute("query-status")["status"])
            if status != "inmigrate":
                self.fail(f"QEMU is {status}, not waiting for an incoming migration (start it with "
                          "qemu_vm state=incoming)", status=status)
            if not has_state(self.path):
                self.fail(f"the state file {self.path} is missing or empty", status=status)
            if self.module.check_mode:
                self.done(True, f"would restore the VM state from {self.path}"
                          f"{' and resume the VM' if resume else ''}", status=status)
            try:
                result = _statefile.restore_state(session, self.path, self.module.params["timeout"], resume)
            except _statefile.StateFileError as exc:
                self.fail(f"{exc}; remove this QEMU", vm_running=exc.vm_running)
        self.done(True, f"restored the VM state from {self.path}", **result)

    def absent(self) -> None:
        present = [path for path in (self.path, _statefile.partial_path(self.path)) if os.path.lexists(path)]
        if not present:
            self.done(False, f"no state file at {self.path}")
        if not self.module.check_mode:
            for path in present:
                try:
                    os.unlink(path)
                except OSError as exc:
                    self.fail(f"cannot remove {path}: {exc.strerror}")
        self.done(True, f"{'would remove' if self.module.check_mode else 'removed'} {', '.join(present)}")


def main() -> None:
    module = new_module(
        vm_argument_spec(
            state={"type": "str", "required": True, "choices": ["saved", "restored", "absent"]},
            path={"type": "path"},
            timeout={"type": "float", "default": 3600},
            resume={"type": "bool", "default": True},
        ),
        supports_check_mode=True,
    )
    paths = vm_paths(module)
    path = module.params["path"] or os.path.join(paths.state_dir, f"{paths.vm}.state")
    if not os.path.isabs(path):
        module.fail_json(msg=f"path must be absolute, got {path!r}")
    getattr(VMState(module, paths, path), module.params["state"])()


if __name__ == "__main__":
    main()
