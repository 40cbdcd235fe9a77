#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_guest_ping
short_description: Check that a VM's guest answers through its QEMU guest agent
version_added: 0.3.0
description:
  - Waits up to O(timeout) seconds for the guest agent (C(qemu-guest-agent) in the guest, on the VM's virtio-serial
    port C(org.qemu.guest_agent.0)) to answer C(guest-ping). A VM gets that port with C(guest_agent=true) in its
    spec.
  - First asks QEMU whether the guest has opened its end of the port, so that a guest without an agent is told
    apart quickly from one whose agent hangs.
  - A new connection syncs with a random id first, so that a late reply meant for an earlier client is dropped.
  - The C(livemig.qemu.live_migration) role uses it after a move as a liveness check of the guest on the target.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.read_only
  - livemig.qemu.attributes.action_group
options:
  timeout:
    description: Seconds to wait for an answer.
    type: float
    default: 30
  required:
    description: Fail when the agent does not answer in time. When V(false), the task succeeds and says so in RV(answered).
    type: bool
    default: false
  connect_timeout:
    description: Seconds to wait for the VM's QMP socket.
    type: float
    default: 10
requirements:
  - qemu.qmp (Python library on the managed host)
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: See that web1's guest answers on its new host
  livemig.qemu.qemu_guest_ping:
    name: web1
    run_dir: /run/livemig
    timeout: 60
    required: true
  delegate_to: hv2
"""

RETURN = r"""
answered:
  description: Whether the guest agent answered C(guest-ping) in time.
  returned: success
  type: bool
answer_ms:
  description: Milliseconds from the start of the task to the agent's answer.
  returned: when the agent answered
  type: int
  sample: 41
msg:
  description: What happened, in a sentence.
  returned: always
  type: str
  sample: the guest agent answered guest-ping after 41 ms
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _guestagent
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec


def main() -> None:
    run_module(
        vm_argument_spec(
            timeout={"type": "float", "default": 30},
            required={"type": "bool", "default": False},
            connect_timeout={"type": "float", "default": 10},
        ),
        _guestagent.run,
        supports_check_mode=True,
    )


if __name__ == "__main__":
    main()
