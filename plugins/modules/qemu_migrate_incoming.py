#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_migrate_incoming
short_description: Target side of a live migration - listen for it, or wait until it has completed
version_added: 0.2.0
description:
  - The VM must have been started with C(-incoming defer) (M(livemig.qemu.qemu_vm) with O(ignore:state=incoming)).
  - V(listening) sets the migration capabilities and parameters that must match the source, then listens on
    O(address) and a port (O(port=0) picks a free one) and returns the URI the source must use.
  - V(completed) waits on the VM's job monitor until the migration has completed and the VM runs here, and returns
    the time QEMU resumed it. Start it (with Ansible C(async)) before the source's switchover to catch that moment.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
  - livemig.qemu.attributes.async
options:
  state:
    description: V(listening) or V(completed), see the description.
    type: str
    choices: [listening, completed]
    default: listening
  address:
    description: Address of this host's migration network to listen on. Required for O(state=listening).
    type: str
  port:
    description: TCP port to listen on; V(0) lets QEMU pick a free one.
    type: int
    default: 0
  capabilities:
    description:
      - Migration capabilities to switch on before C(migrate-incoming), besides C(events).
      - C(postcopy-ram) and C(multifd) must be on at both ends when the source uses them
        (M(livemig.qemu.qemu_migrate) O(livemig.qemu.qemu_migrate#module:capabilities)); C(postcopy-ram) here needs
        userfaultfd on this host. Source-only capabilities such as C(auto-converge) and C(xbzrle) need not be set.
      - Names are checked against C(query-migrate-capabilities) of this QEMU.
    type: list
    elements: str
    default: []
  parameters:
    description:
      - Migration parameters to set before C(migrate-incoming), for example C(multifd-channels) and
        C(multifd-compression), which must match the source's.
      - Names are checked against the parameters this QEMU reports.
    type: dict
    default: {}
  timeout:
    description: With O(state=completed), seconds to wait.
    type: float
    default: 3600
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Listen for the migration of web1
  livemig.qemu.qemu_migrate_incoming:
    name: web1
    run_dir: /run/livemig
    address: 192.0.2.12
  register: incoming

- name: Wait until web1 runs here
  livemig.qemu.qemu_migrate_incoming:
    name: web1
    run_dir: /run/livemig
    state: completed
  async: 3600
  poll: 0
"""

RETURN = r"""
uri:
  description: The URI the source must migrate to.
  returned: when O(state=listening)
  type: str
  sample: tcp:192.0.2.12:49152
port:
  description: The port QEMU listens on.
  returned: when O(state=listening)
  type: int
status:
  description: QEMU's run state.
  returned: always
  type: str
resume_time:
  description: QEMU's timestamp (seconds since the epoch) of the RESUME event on this host, when it was seen.
  returned: when O(state=completed)
  type: float
disk_allocated:
  description: Bytes allocated on this host by each disk image of the VM (what the disk mirrors had to write).
  returned: when O(state=completed)
  type: dict
  sample: {"root": 9502720}
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _incoming
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec


def main() -> None:
    run_module(
        vm_argument_spec(
            state={"type": "str", "default": "listening", "choices": ["listening", "completed"]},
            address={"type": "str"},
            port={"type": "int", "default": 0},
            capabilities={"type": "list", "elements": "str", "default": []},
            parameters={"type": "dict", "default": {}},
            timeout={"type": "float", "default": 3600},
        ),
        _incoming.run,
        supports_check_mode=True,
        required_if=[("state", "listening", ("address",))],
    )


if __name__ == "__main__":
    main()
