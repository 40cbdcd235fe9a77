#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_vm_lock
short_description: Take or give back a VM's lease on this host, so that one play at a time changes the VM
version_added: 0.3.0
description:
  - A lease names who changes the VM on this host (O(operation), O(holder)), under an id (O(lock_id)), until it is
    given back or O(ttl) seconds have passed. It is kept in C(<state_dir>/<name>/lock.json).
  - Every livemig.qemu module that changes the VM checks it (their O(livemig.qemu.qemu_vm#module:lock_id) option);
    the lease's own id goes on, another live lease makes them fail at once naming its holder. The playbooks take the
    VM's lease on every host they change first, so that a second migrate, start or stop of the same VM refuses
    before it changes anything.
  - V(locked) takes the lease, or extends this id's lease to O(ttl) from now when that is later; it fails when
    another live lease holds the VM here. V(unlocked) gives back the lease of O(lock_id); giving back the id of a
    lease whose play is gone breaks that lease.
  - Taking and giving back happen under a short file lock, so two controllers never both take the lease.
  - The lease names the controller process that took it (O(controller), filled in on the controller). When the
    lease is refused because the play of a controller that ran on this same controller machine has ended (killed,
    or its machine restarted) and no module run works under that lease on the host any more, the task takes it
    over by itself (RV(replaced)); a lease of another controller machine must be ended with V(unlocked).
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
options:
  state:
    description: V(locked) or V(unlocked).
    type: str
    choices: [locked, unlocked]
    default: locked
  lock_id:
    description: The lease's id, for example the move's id.
    type: str
    required: true
  operation:
    description: What the holder does, for the refusal message (for example C(migrate to hv2)).
    type: str
    default: change
  holder:
    description: Who holds the lease, for the refusal message (for example C(root@controller1)).
    type: str
    default: unknown
  ttl:
    description: Seconds the lease lasts at most when it is not given back (its play may be gone).
    type: float
    default: 3600
  hosts:
    description: Every host the play takes the VM's lease on, recorded with the lease (see O(holding)).
    type: list
    elements: str
    default: []
  holding:
    description:
      - A host where the caller already holds the VM's lease. A play keeps the lease of its first host until it
        ends, so a lease here of a play that also spans that host (O(hosts)) belongs to a play that has ended, for
        example one whose controller lost this host and could not give the lease back; it is replaced (RV(replaced)).
    type: str
  controller:
    description:
      - The controller process that holds the lease (C(host), C(boot_id), C(pid), C(started)). The module's action
        plugin fills it in on the controller; leave it unset.
    type: dict
  replace:
    description:
      - The id of a lease to take over if it still holds the VM here and no module run works under it any more. The
        action plugin sets it for a lease whose controller process has ended; leave it unset.
    type: str
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Take web1's lease for a move
  livemig.qemu.qemu_vm_lock:
    name: web1
    run_dir: /run/livemig
    lock_id: "{{ move_id }}"
    operation: migrate to hv2
    holder: "{{ lookup('ansible.builtin.env', 'USER') }}@{{ lookup('ansible.builtin.pipe', 'hostname') }}"
    ttl: 7200

- name: Give it back
  livemig.qemu.qemu_vm_lock:
    name: web1
    run_dir: /run/livemig
    lock_id: "{{ move_id }}"
    state: unlocked
"""

RETURN = r"""
busy:
  description: When the lease is refused, the pids of the module runs (such as a move's source-side job) that still
    work under the live lease on this host.
  returned: when the lease is refused
  type: list
  elements: int
replaced:
  description: The lease of a play that ended, which this one replaced (see O(holding) and O(controller)).
  returned: when one was replaced
  type: dict
lock:
  description: The lease after the task (C(id), C(operation), C(holder), C(acquired) and C(expires) in epoch
    seconds, C(hosts), C(controller), C(pids) of the module runs working under it), or null when the VM holds none
    here. When the lease is refused, the live one that holds the VM.
  returned: always
  type: dict
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _lock
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec


def main() -> None:
    run_module(
        vm_argument_spec(
            state={"type": "str", "default": "locked", "choices": ["locked", "unlocked"]},
            lock_id={"type": "str", "required": True},
            operation={"type": "str", "default": "change"},
            holder={"type": "str", "default": "unknown"},
            ttl={"type": "float", "default": 3600},
            hosts={"type": "list", "elements": "str", "default": []},
            holding={"type": "str"},
            controller={"type": "dict"},
            replace={"type": "str"},
        ),
        _lock.run,
        needs_qmp=False,
        supports_check_mode=True,
    )


if __name__ == "__main__":
    main()
