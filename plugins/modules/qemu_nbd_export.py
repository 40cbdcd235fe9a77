#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_nbd_export
short_description: Export a VM's disks over NBD from its own QEMU, for a disk mirror to write into
version_added: 0.2.0
description:
  - Starts QEMU's built-in NBD server bound to one address (never all addresses) and exports the given disks
    writable, each under an unguessable export name.
  - On a migration target this is where the source's block mirror writes.
  - The server's address and port are kept in this host's record of the VM, never on another host.
  - With O(tls_dir) the server speaks only TLS and admits only the client O(tls_peer_dn).
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.vm.lock
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
  - livemig.qemu.tls
  - livemig.qemu.tls.server
options:
  state:
    description: V(present) starts the server and adds the exports; V(absent) removes all exports and stops it.
    type: str
    choices: [present, absent]
    default: present
  disks:
    description: Names of the VM's disks to export.
    type: list
    elements: str
    default: []
  address:
    description: Address to bind the NBD server to. Required for O(state=present).
    type: str
  port:
    description: TCP port; V(0) picks a free one.
    type: int
    default: 0
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Export web1's root disk on the migration network
  livemig.qemu.qemu_nbd_export:
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    address: 192.0.2.12
    disks: [root]
  register: nbd

- name: Stop exporting, with the host's locations in one dict
  livemig.qemu.qemu_nbd_export:
    name: web1
    host:
      run_dir: /run/livemig
      image_dir: /var/lib/livemig/images
    state: absent
"""

RETURN = r"""
host:
  description: Address the NBD server listens on.
  returned: when O(state=present)
  type: str
port:
  description: Port the NBD server listens on.
  returned: when O(state=present)
  type: int
exports:
  description: Export name by disk name.
  returned: when O(state=present)
  type: dict
  sample: {"root": "root-3q2Xk9yWcPj1s0bq"}
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _nbdexport
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec
from ansible_collections.livemig.qemu.plugins.module_utils._tlsqemu import SERVER_OPTIONS


def main() -> None:
    run_module(
        vm_argument_spec(
            state={"type": "str", "default": "present", "choices": ["present", "absent"]},
            disks={"type": "list", "elements": "str", "default": []},
            address={"type": "str"},
            port={"type": "int", "default": 0},
            **SERVER_OPTIONS,
        ),
        _nbdexport.run,
        supports_check_mode=True,
        required_if=[("state", "present", ("address",))],
        changes_vm=True,
    )


if __name__ == "__main__":
    main()
