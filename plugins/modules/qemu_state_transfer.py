#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_state_transfer
short_description: Source side of a stateful move, as one job that never leaves the VM paused
version_added: 0.3.0
description:
  - Runs on the source host, with Ansible C(async), so that it goes on when the controller goes away.
  - V(sent) saves the VM's state to O(path) (the VM pauses, see M(livemig.qemu.qemu_vm_state)), sends each of
    O(copies) and then the state file to the target's receivers (M(livemig.qemu.qemu_nbd_copy) with
    O(livemig.qemu.qemu_nbd_copy#module:state=listening)), and waits for the commit (O(state=committed)).
  - Without the commit within O(commit_timeout) seconds of the copy, or when the save or a copy fails, it resumes
    the VM here by itself and fails. The caller restores the state on the target paused, commits here, and only
    then lets the VM run there, so a VM resumed here never ran on the target.
  - V(committed) is the caller's commit. It fails when the job has already resumed the VM here. It takes no lease;
    the job it answers holds the VM's.
  - The move's phase is kept in this host's record of the VM (C(started), C(sent) once everything is on the target,
    C(switchover) once committed, C(rolled-back)), under its lock, so that the commit and the job's own deadline
    never both win.
  - With O(tls_dir) every copy is sent over TLS (the receivers listen with TLS); the state file itself is saved
    here without TLS, which QEMU does not put on a file.
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
    description: V(sent) or V(committed), see the description.
    type: str
    choices: [sent, committed]
    default: sent
  migration_id:
    description: The move's id, kept with its phase in this host's record.
    type: str
    required: true
  target_name:
    description: The target host's name, for the record.
    type: str
  path:
    description: The state file here. Defaults to C(<state_dir>/<name>/state).
    type: path
  copies:
    description:
      - The local disks to send, each a dict with C(src) (the image or block device here), C(format), C(uri) (the
        receiver's C(nbd://) address), C(size) (the disk's size in bytes, for a block device) and C(target_is_zero)
        (the receiver is empty, so zeros are skipped).
    type: list
    elements: dict
    default: []
  state_uri:
    description: The C(nbd://) address of the receiver of the state file (raw, at least as large as the state).
    type: str
  timeout:
    description: Seconds the save, and each copy, may take.
    type: float
    default: 3600
  commit_timeout:
    description: Seconds to wait for the commit once everything is sent, before the VM resumes here.
    type: float
    default: 120
requirements:
  - qemu-img (Debian package qemu-utils)
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Save, send and wait for the commit, on the source
  livemig.qemu.qemu_state_transfer:
    name: web1
    run_dir: /run/livemig
    migration_id: "{{ move_id }}"
    target_name: hv2
    copies: [{src: /var/lib/livemig/images/web1-root.qcow2, format: qcow2, uri: "{{ root_receiver.uri }}"}]
    state_uri: "{{ state_receiver.uri }}"
  async: 7200
  poll: 0
  register: transfer

- name: Commit, once the target holds the VM restored and paused
  livemig.qemu.qemu_state_transfer:
    name: web1
    run_dir: /run/livemig
    migration_id: "{{ move_id }}"
    state: committed
"""

RETURN = r"""
phase:
  description: The move's phase in this host's record afterwards (C(switchover) once committed).
  returned: success
  type: str
saved:
  description: What the save reported (see M(livemig.qemu.qemu_vm_state) RV(livemig.qemu.qemu_vm_state#module:size),
    C(stop_time), C(completed_time), C(total_time_ms)).
  returned: when O(state=sent)
  type: dict
copies:
  description: Each copy sent (C(src), C(uri), C(seconds)), the state file last.
  returned: when O(state=sent)
  type: list
  elements: dict
source_running:
  description: Whether the VM runs here after a failure (it was resumed).
  returned: on failure
  type: bool
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _statetransfer
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec
from ansible_collections.livemig.qemu.plugins.module_utils._tlsqemu import CLIENT_OPTIONS


def main() -> None:
    run_module(
        vm_argument_spec(
            state={"type": "str", "default": "sent", "choices": ["sent", "committed"]},
            migration_id={"type": "str", "required": True},
            target_name={"type": "str"},
            path={"type": "path"},
            copies={"type": "list", "elements": "dict", "default": []},
            state_uri={"type": "str"},
            timeout={"type": "float", "default": 3600},
            commit_timeout={"type": "float", "default": 120},
            **CLIENT_OPTIONS,
        ),
        _statetransfer.run,
        supports_check_mode=True,
        required_if=[("state", "sent", ("state_uri",))],
        changes_vm=lambda params: params["state"] == "sent",  # the commit only answers the job, which holds the lease
    )


if __name__ == "__main__":
    main()
