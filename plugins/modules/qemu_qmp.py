#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_qmp
short_description: Run any QMP command on a VM's monitor
version_added: 0.2.0
description:
  - Sends one QMP command to the VM's monitor and returns QEMU's answer, optionally filtered by a JMESPath query.
  - Commands named C(query-*) only read; they report no change, also run in check mode and take no lease, so they
    also run while another play holds the VM (O(lock_id)). Any other command reports a change and is skipped in
    check mode.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.vm.lock
  - livemig.qemu.attributes
  - livemig.qemu.attributes.action_group
attributes:
  check_mode:
    support: partial
    details: Only C(query-*) commands run in check mode.
options:
  command:
    description: The QMP command, for example C(query-status) or C(migrate-set-parameters).
    type: str
    required: true
  arguments:
    description: The command's arguments.
    type: dict
    default: {}
  query:
    description: A JMESPath expression applied to the result; its value is returned as RV(queried).
    type: str
  monitor:
    description: V(main) is the VM's monitor; V(job) is the second one, used by long-running modules.
    type: str
    choices: [main, job]
    default: main
  timeout:
    description: Seconds to wait for QEMU's answer.
    type: float
    default: 30
requirements:
  - jmespath (on the managed host, when O(query) is used)
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Ask where the migration stands
  livemig.qemu.qemu_qmp:
    name: web1
    run_dir: /run/livemig
    command: query-migrate
    query: ram.remaining
  register: remaining

- name: Set the downtime limit
  livemig.qemu.qemu_qmp:
    name: web1
    host:
      run_dir: /run/livemig
    command: migrate-set-parameters
    arguments:
      downtime-limit: 200
"""

RETURN = r"""
result:
  description: QEMU's answer.
  returned: success
  type: raw
queried:
  description: The value of O(query) applied to RV(result).
  returned: when O(query) is given
  type: raw
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _qmpcommand
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec


def main() -> None:
    run_module(
        vm_argument_spec(
            command={"type": "str", "required": True},
            arguments={"type": "dict", "default": {}},
            query={"type": "str"},
            monitor={"type": "str", "default": "main", "choices": ["main", "job"]},
            timeout={"type": "float", "default": 30},
        ),
        _qmpcommand.run,
        supports_check_mode=True,
        changes_vm=lambda params: not params["command"].startswith("query-"),
    )


if __name__ == "__main__":
    main()
