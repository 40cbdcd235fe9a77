#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_block_mirror
short_description: Mirror a running VM's disk into an NBD export on another host
version_added: 0.2.0
description:
  - Attaches the target's NBD export as a block node of the source QEMU and starts C(blockdev-mirror) (full sync)
    into it, while the guest keeps running and writing.
  - Waits, driven by QMP events, until the mirror is READY (the copy has caught up and follows every new write).
  - Uses the VM's job monitor, so the main monitor stays free while it waits.
  - The mirror is finished at switchover by M(livemig.qemu.qemu_migrate), which cancels it gracefully so that the
    target holds a consistent copy. V(absent) aborts it instead and detaches the NBD node.
  - With O(tls_dir) the NBD connection is TLS; this host shows its client certificate and checks the target's.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.vm.lock
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
  - livemig.qemu.tls
  - livemig.qemu.tls.client
options:
  disk:
    description: Name of the VM's disk (as in its spec).
    type: str
    required: true
  state:
    description:
      - V(ready) starts the mirror if needed and waits until it is READY.
      - V(started) starts it and returns at once with its progress.
      - V(absent) force-cancels the mirror (the target copy is then incomplete) and detaches the NBD node.
    type: str
    choices: [ready, started, absent]
    default: ready
  nbd_host:
    description: Address of the target's NBD server. Required to start a mirror.
    type: str
  nbd_port:
    description: Port of the target's NBD server. Required to start a mirror.
    type: int
  export:
    description: NBD export name on the target. Required to start a mirror.
    type: str
  copy_mode:
    description:
      - V(background) copies new writes asynchronously; V(write-blocking) makes every guest write wait until the
        target has it too, so that the mirror converges even under heavy disk writes.
    type: str
    choices: [background, write-blocking]
    default: background
  speed:
    description: Bandwidth cap for the mirror in bytes per second; V(0) is unlimited.
    type: int
    default: 0
  timeout:
    description: Seconds to wait for READY with O(state=ready).
    type: float
    default: 3600
  stall_timeout:
    description:
      - With O(state=ready), fail when the mirror copies nothing for this many seconds before it is READY; a target
        that dropped off the network never makes the mirror fail by itself.
    type: float
    default: 60
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Mirror the root disk of web1 to the target and wait until it is in sync
  livemig.qemu.qemu_block_mirror:
    name: web1
    run_dir: /run/livemig
    disk: root
    nbd_host: 192.0.2.12
    nbd_port: "{{ nbd.port }}"
    export: "{{ nbd.exports.root }}"

- name: Abort it
  livemig.qemu.qemu_block_mirror:
    name: web1
    run_dir: /run/livemig
    disk: root
    state: absent
"""

RETURN = r"""
progress:
  description: The mirror job's progress when the task ended.
  returned: when a mirror job exists
  type: dict
  sample: {"job": "livemig-mirror-disk-root", "ready": true, "offset": 1073741824, "len": 1073741824,
           "remaining": 0, "percent": 100.0, "status": "ready"}
history:
  description:
    - With O(state=ready), one sample per second while waiting of all this VM's mirrors together, for charts.
    - Each has C(t) (epoch seconds), C(disk_remaining) and C(disk_total) in bytes.
  returned: when O(state=ready)
  type: list
  elements: dict
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _mirror
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec
from ansible_collections.livemig.qemu.plugins.module_utils._tlsqemu import CLIENT_OPTIONS


def main() -> None:
    run_module(
        vm_argument_spec(
            disk={"type": "str", "required": True},
            state={"type": "str", "default": "ready", "choices": ["ready", "started", "absent"]},
            nbd_host={"type": "str"},
            nbd_port={"type": "int"},
            export={"type": "str", "no_log": False},
            copy_mode={"type": "str", "default": "background", "choices": ["background", "write-blocking"]},
            speed={"type": "int", "default": 0},
            timeout={"type": "float", "default": 3600},
            stall_timeout={"type": "float", "default": 60},
            **CLIENT_OPTIONS,
        ),
        _mirror.run,
        supports_check_mode=True,
        changes_vm=True,
    )


if __name__ == "__main__":
    main()
