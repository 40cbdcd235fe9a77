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
  - Uses the VM's job monitor (C(<run_dir>/<name>/job.qmp)), so other modules can still use the main one.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.vm.lock
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
      - Defaults to C(<state_dir>/<name>/state), with O(state_dir) (or O(host.state_dir)) as in the VM options.
    type: path
  timeout:
    description: Seconds the transfer of the state may take before it is abandoned.
    type: float
    default: 3600
  resume:
    description: With O(state=restored), start the VM once its state is loaded; V(false) leaves it paused.
    type: bool
    default: true
  parameters:
    description:
      - With O(state=restored), migration parameters to set on this QEMU before it loads the state
        (C(migrate-set-parameters)), for example the C(announce-*) timing with which it announces the guest's NICs
        as the VM resumes.
    type: dict
    default: {}
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
  sample: /var/lib/livemig/images/web1/state
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

from ansible_collections.livemig.qemu.plugins.module_utils import _vmstate
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec


def main() -> None:
    run_module(
        vm_argument_spec(
            state={"type": "str", "required": True, "choices": ["saved", "restored", "absent"]},
            path={"type": "path"},
            timeout={"type": "float", "default": 3600},
            resume={"type": "bool", "default": True},
            parameters={"type": "dict", "default": {}},
        ),
        _vmstate.run,
        supports_check_mode=True,
        changes_vm=True,
    )


if __name__ == "__main__":
    main()
