#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_migrate_incoming
short_description: Target side of a live migration - listen for it, let the VM run once it is here, or abort it
version_added: 0.2.0
description:
  - The VM must have been started with C(-incoming defer) and C(-S) (M(livemig.qemu.qemu_vm) with
    O(ignore:state=incoming)). Once the migration has delivered it, the VM waits paused.
  - V(listening) sets the migration capabilities and parameters that must match the source, then listens on
    O(address) and a port (O(port=0) picks a free one) and returns the URI the source must use. With O(tls_dir) the
    migration stream is TLS, and only the client O(tls_peer_dn) gets in (QEMU's C(tls-creds) and C(tls-authz)).
    It also picks a second free port on O(address) where a paused post-copy is resumed, RV(recovery_uri), and keeps
    it in this host's record of the VM.
  - V(completed) waits on the VM's job monitor until the migration has delivered the VM (or post-copy has begun).
    Then it records, durably in this host's record of the VM, that the VM runs here (the ran marker), drops the
    NBD exports and their connections, and lets the VM run; it returns the time QEMU resumed it. Start it (with
    Ansible C(async)) before the source's switchover to catch that moment. A VM that arrived while no watcher ran
    is let run the same way.
  - In post-copy it goes on until all of the VM's memory has arrived. Each time the post-copy pauses (the stream
    broke), it issues C(migrate-recover) on RV(recovery_uri), retried for O(recovery_timeout) while QEMU refuses, so
    that the source (M(livemig.qemu.qemu_migrate) with
    O(livemig.qemu.qemu_migrate#module:recovery_uri)) can resume it; the stream is TLS like the first one.
  - V(aborted) ends this host's QEMU of the move O(migration_id) unless the VM ran here, and says whether it did
    (RV(ran)). Without a ran marker a QEMU still waiting for the migration or paused by C(-S) never ran the guest;
    it is killed, and the marker is read again once it is gone. A VM that ran here is left alone; when its QEMU is
    gone, this host takes ownership of the VM, since its disks are the newest.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.vm.lock
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
  - livemig.qemu.attributes.async
  - livemig.qemu.tls
  - livemig.qemu.tls.server
options:
  state:
    description: V(listening), V(completed) or V(aborted), see the description.
    type: str
    choices: [listening, completed, aborted]
    default: listening
  migration_id:
    description: The move's id (M(livemig.qemu.qemu_vm) O(livemig.qemu.qemu_vm#module:migration_id)). Required for
      O(state=aborted), which leaves alone a record of another move.
    type: str
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
      - Names are checked against the parameters this QEMU reports. C(tls-creds), C(tls-authz) and C(tls-hostname)
        come from O(tls_dir) and O(tls_peer_dn).
    type: dict
    default: {}
  timeout:
    description: With O(state=completed), seconds to wait.
    type: float
    default: 3600
  recovery_timeout:
    description:
      - With O(state=completed), seconds for which C(migrate-recover) is retried while QEMU refuses it, each time the
        post-copy pauses (the recovery port still taken, the broken stream not yet torn down).
    type: float
    default: 120
    version_added: 0.3.0
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
recovery_uri:
  description:
    - Where a paused post-copy is resumed (C(migrate-recover) on the target, C(migrate) with C(resume=true) on the
      source); a free port on O(address) when this module listened, kept in this host's record of the VM. Null for a
      listener started by an older version.
  returned: when O(state=listening)
  type: str
  sample: tcp:192.0.2.12:49153
  version_added: 0.3.0
status:
  description: QEMU's run state (null when no QEMU of the VM runs here).
  returned: always
  type: str
migrate_status:
  description:
    - The incoming migration's status in QEMU's C(query-migrate) (for example C(completed), or C(postcopy-paused)
      while a post-copy waits for memory the source still holds); null when no QEMU of the VM runs here.
  returned: when O(state=aborted)
  type: str
ran:
  description: Whether the VM ran on this host in this move (null when this host's record belongs to another move).
  returned: when O(state=aborted)
  type: bool
killed:
  description: Whether a QEMU that never ran the guest was killed.
  returned: when O(state=aborted) killed one
  type: bool
running:
  description: Whether a QEMU of the VM still runs here.
  returned: when O(state=aborted)
  type: bool
took_ownership:
  description: This host now owns the VM, which ran here last and whose QEMU is gone.
  returned: when O(state=aborted) took it
  type: bool
resume_time:
  description: QEMU's timestamp (seconds since the epoch) of the RESUME event on this host, when it was seen.
  returned: when O(state=completed)
  type: float
disk_allocated:
  description: Bytes allocated on this host by each disk image of the VM (what the disk mirrors had to write).
  returned: when O(state=completed)
  type: dict
  sample: {"root": 9502720}
postcopy_blocktime_ms:
  description: How long, in milliseconds, the vCPUs together were stopped waiting for pages during post-copy (QEMU's
    C(postcopy-blocktime), with the capability C(postcopy-blocktime) on here); null when post-copy did not run.
  returned: when O(state=completed)
  type: int
  version_added: 0.3.0
postcopy_vcpu_blocktime_ms:
  description: The same wait for each vCPU, in milliseconds; null when post-copy did not run.
  returned: when O(state=completed)
  type: list
  elements: int
  version_added: 0.3.0
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _incoming
from ansible_collections.livemig.qemu.plugins.module_utils._tlsqemu import SERVER_OPTIONS
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec


def main() -> None:
    run_module(
        vm_argument_spec(
            state={"type": "str", "default": "listening", "choices": ["listening", "completed", "aborted"]},
            migration_id={"type": "str"},
            address={"type": "str"},
            port={"type": "int", "default": 0},
            capabilities={"type": "list", "elements": "str", "default": []},
            parameters={"type": "dict", "default": {}},
            timeout={"type": "float", "default": 3600},
            recovery_timeout={"type": "float", "default": 120},
            **SERVER_OPTIONS,
        ),
        _incoming.run,
        supports_check_mode=True,
        required_if=[("state", "listening", ("address",)), ("state", "aborted", ("migration_id",))],
        changes_vm=True,
    )


if __name__ == "__main__":
    main()
