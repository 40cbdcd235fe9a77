#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_vm
short_description: Run, prepare as migration target, stop or remove a QEMU VM on this host
version_added: 0.2.0
description:
  - Starts a VM from its spec (one C(livemig_vms) entry), daemonized, with its QMP monitors and serial console
    on unix sockets in O(run_dir).
  - Keeps a per-host record saying whether this host owns the VM, and the machine type and accelerator the VM was
    started with, so that later starts and migration targets keep the same guest ABI.
  - Refuses to start a VM this host does not own, unless asked to claim it (O(claim)) or told that it is a
    migration target (O(migration_target)).
  - An existing disk image at a disk's path is used as it is; a missing one is created.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.vm.lock
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
options:
  state:
    description:
      - V(running) starts the VM if it does not run. On a migration target whose incoming migration has completed,
        it makes this host the owner (and lets a VM that still waits paused run, after recording that it runs
        here).
      - V(incoming) starts the VM paused, waiting for an incoming migration (C(-incoming defer)), with fresh local
        disks of the source's size. Needs O(migration_target), O(machine) and O(accel). It stays paused after the
        migration (C(-S)) until M(livemig.qemu.qemu_migrate_incoming) has recorded that it runs here.
      - V(stopped) stops QEMU (ACPI power-down for up to O(powerdown_timeout) seconds, then quit). Ownership and
        disks stay.
      - V(absent) ends QEMU at once, deletes the local disks (unless O(keep_disks)) and this host's record.
        Shared disks are never deleted.
    type: str
    choices: [running, incoming, stopped, absent]
    default: running
  spec:
    description:
      - The VM description. Required for O(state=running) and O(state=incoming).
      - Keys C(memory_mb), C(vcpus), C(machine), C(cpu_model), C(accel) (V(auto), V(kvm) or V(tcg); V(auto) is KVM
        when a KVM guest boots on this host, else TCG), optional C(kernel), C(initrd), C(append) (direct kernel boot),
        and C(disks), a list of at most 8 dicts with C(name), C(size_mb), C(format) (V(qcow2) or V(raw)), C(shared)
        and C(path) (a block device, raw, never created or deleted).
      - C(firmware) V(bios) (default) or V(uefi) (OVMF code read-only plus the VM's own variable store
        C(<image_dir>/<name>-nvram.raw), copied from the firmware's template at the first start; C(nvram.shared)
        puts it in the shared directory).
      - C(nics), a list of at most 8 dicts with C(name), C(bridge), C(mac) (derived from the VM and NIC names when
        left out), C(model) (V(virtio-net-pci), V(e1000), V(e1000e), V(rtl8139)), C(mtu) and C(queues) (virtio).
        QEMU opens each NIC's tap (C(lm) + 12 hex digits, the same name on every host); this module puts it on the
        bridge and up. The tap goes when the QEMU goes.
      - C(cdrom), a read-only image; C(rng) (virtio-rng); C(guest_agent) (a virtio-serial channel for
        qemu-guest-agent, C(<run_dir>/<name>/qga)).
    type: dict
  qemu_binary:
    description: QEMU system emulator to run, as O(host.qemu_binary) (which takes its place when O(host) is given).
    type: str
    default: qemu-system-x86_64
  claim:
    description:
      - Make this host the owner when it does not own the VM yet and no QEMU of it runs here.
      - The caller must know that no other host owns the VM (C(playbooks/start.yml) checks every host first).
    type: bool
    default: false
  migration_target:
    description:
      - This host receives the VM by migration. Allows O(state=incoming) on a host that does not own the VM, and lets
        O(state=running) claim ownership once the incoming migration has completed; the NBD server that exported
        its disks for the mirror stops then, if it still runs (an owner's disks take no writes from outside).
    type: bool
    default: false
  machine:
    description:
      - Versioned machine type to use, pinned from the source for O(state=incoming).
      - Without it, the type comes from this host's record, else from the spec (an alias is resolved to its
        versioned type).
    type: str
  accel:
    description: Accelerator to use (V(kvm) or V(tcg)), pinned from the source for O(state=incoming).
    type: str
    choices: [kvm, tcg]
  migration_id:
    description: With O(state=incoming), the move's id, kept in this host's record of the VM with the ran marker
      (see M(livemig.qemu.qemu_migrate_incoming)).
    type: str
  disk_sizes:
    description: Virtual size in bytes per disk name, for the fresh local disks of O(state=incoming).
    type: dict
    default: {}
  keep_disks:
    description:
      - With O(state=absent), leave the local disk images in place.
      - With O(state=incoming), start with the local disk images already on this host (copied there, as the stateful
        path does) instead of fresh empty ones.
    type: bool
    default: false
  powerdown_timeout:
    description: With O(state=stopped), seconds to wait for the guest to power off before QEMU is told to quit.
    type: float
    default: 120
  nbd_export:
    description:
      - With O(state=incoming), also export the fresh local disks over NBD from the new QEMU, for the source's
        mirrors to write into, as M(livemig.qemu.qemu_nbd_export) does (see there), in the same call.
      - The server and its exports go when the target takes the VM over (O(state=running)) or is removed.
    type: dict
    version_added: 0.3.0
    suboptions:
      address:
        description: Address to bind the NBD server to (the host's migration address; never all addresses).
        type: str
        required: true
      port:
        description: TCP port; V(0) picks a free one.
        type: int
        default: 0
      disks:
        description: Names of the VM's disks to export.
        type: list
        elements: str
        default: []
      tls_dir:
        description: This host's TLS directory in QEMU's x509 layout; the server then speaks only TLS.
        type: path
      tls_peer_dn:
        description: With O(nbd_export.tls_dir), the subject of the only client certificate admitted (the source's).
        type: str
  listen:
    description:
      - With O(state=incoming), also listen for the migration at once, as M(livemig.qemu.qemu_migrate_incoming)
        with O(livemig.qemu.qemu_migrate_incoming#module:state=listening) does (see there), in the same call. The
        listener serves one migration; it also picks the port where a paused post-copy is resumed.
    type: dict
    version_added: 0.3.0
    suboptions:
      address:
        description: Address to listen on (the host's migration address; never all addresses).
        type: str
        required: true
      port:
        description: TCP port; V(0) picks a free one.
        type: int
        default: 0
      capabilities:
        description: Migration capabilities to switch on here, the same as on the source.
        type: list
        elements: str
        default: []
      parameters:
        description: Migration parameters to set here (multifd channels and compression, for example).
        type: dict
        default: {}
      tls_dir:
        description: This host's TLS directory in QEMU's x509 layout; the migration stream is then TLS only.
        type: path
      tls_peer_dn:
        description: With O(listen.tls_dir), the subject of the only client certificate admitted (the source's).
        type: str
requirements:
  - QEMU, O(qemu_binary) (Debian package qemu-system-x86), and qemu-img (Debian package qemu-utils) to create disks
  - iproute2 (C(ip)) for VMs with NICs, OVMF (Debian package ovmf) for VMs with firmware uefi
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Start the VM on this host and make this host its owner
  livemig.qemu.qemu_vm:
    name: web1
    spec: "{{ livemig_vms['web1'] }}"
    image_dir: /var/lib/livemig/images
    run_dir: /run/livemig
    claim: true

- name: Prepare this host as the target of a migration
  livemig.qemu.qemu_vm:
    name: web1
    state: incoming
    spec: "{{ livemig_vms['web1'] }}"
    image_dir: /var/lib/livemig/images
    run_dir: /run/livemig
    migration_target: true
    machine: pc-q35-10.0
    accel: kvm

- name: Start the target, export its fresh disk and listen for the migration, in one call
  livemig.qemu.qemu_vm:
    name: web1
    state: incoming
    spec: "{{ livemig_vms['web1'] }}"
    host:
      run_dir: /run/livemig
      image_dir: /var/lib/livemig/images
    migration_target: true
    machine: pc-q35-10.0
    accel: kvm
    nbd_export:
      address: 192.0.2.12
      disks: [root]
    listen:
      address: 192.0.2.12
      capabilities: [postcopy-ram]
  register: target

- name: Stop it, keeping its disks
  livemig.qemu.qemu_vm:
    name: web1
    state: stopped
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
"""

RETURN = r"""
status:
  description: QEMU's run state after the task (C(running), C(inmigrate), ...), or C(null) when no QEMU runs.
  returned: always
  type: str
  sample: running
owner:
  description: Whether this host owns the VM after the task.
  returned: always
  type: bool
pid:
  description: Process id of the VM's QEMU, when it runs.
  returned: always
  type: int
machine:
  description: The versioned machine type the VM runs with.
  returned: when known
  type: str
  sample: pc-q35-10.0
accel:
  description: The accelerator the VM runs with.
  returned: when known
  type: str
  sample: kvm
disks:
  description: The VM's disks on this host.
  returned: when a spec is given
  type: list
  elements: dict
  sample: [{"name": "root", "path": "/var/lib/livemig/images/web1-root.qcow2", "created": false, "shared": false}]
sockets:
  description: Paths of the QMP monitor, the job monitor and the serial console.
  returned: always
  type: dict
taps:
  description: This host's tap of each NIC, by NIC name (a volatile key of this host's record, never another host's).
  returned: when QEMU was started
  type: dict
  sample: {"lan": "lm3f9a01c2b7d4"}
taps_removed:
  description: Taps of this VM that outlived their QEMU and were removed.
  returned: when QEMU was stopped or removed and the record listed taps
  type: list
  elements: str
nbd:
  description: With O(nbd_export), the NBD server's C(host), C(port) and C(exports) (export name by disk name).
  returned: when O(nbd_export) is given, except in check mode before QEMU runs
  type: dict
  version_added: 0.3.0
  sample: {"host": "192.0.2.12", "port": 40211, "exports": {"root": "root-3q2Xk9yWcPj1s0bq"}}
incoming:
  description:
    - With O(listen), where the migration is listened for, C(uri) and C(port), and C(recovery_uri), where a paused
      post-copy is resumed.
  returned: when O(listen) is given, except in check mode before QEMU runs
  type: dict
  version_added: 0.3.0
  sample: {"uri": "tcp:192.0.2.12:40219", "port": 40219, "recovery_uri": "tcp:192.0.2.12:40227"}
stopped_by:
  description: How QEMU ended (C(powerdown), C(quit) or C(kill)).
  returned: when QEMU was stopped
  type: str
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _lifecycle
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec
from ansible_collections.livemig.qemu.plugins.module_utils._tlsqemu import SERVER_OPTIONS


def main() -> None:
    run_module(
        vm_argument_spec(
            state={"type": "str", "default": "running", "choices": ["running", "incoming", "stopped", "absent"]},
            spec={"type": "dict"},
            qemu_binary={"type": "str", "default": "qemu-system-x86_64"},
            claim={"type": "bool", "default": False},
            migration_target={"type": "bool", "default": False},
            machine={"type": "str"},
            accel={"type": "str", "choices": ["kvm", "tcg"]},
            migration_id={"type": "str"},
            disk_sizes={"type": "dict", "default": {}},
            keep_disks={"type": "bool", "default": False},
            powerdown_timeout={"type": "float", "default": 120},
            nbd_export={"type": "dict", "options": {
                "address": {"type": "str", "required": True},
                "port": {"type": "int", "default": 0},
                "disks": {"type": "list", "elements": "str", "default": []},
                **SERVER_OPTIONS,
            }},
            listen={"type": "dict", "options": {
                "address": {"type": "str", "required": True},
                "port": {"type": "int", "default": 0},
                "capabilities": {"type": "list", "elements": "str", "default": []},
                "parameters": {"type": "dict", "default": {}},
                **SERVER_OPTIONS,
            }},
        ),
        _lifecycle.run,
        supports_check_mode=True,
        required_if=[("state", "running", ("spec",)), ("state", "incoming", ("spec", "machine", "accel"))],
        changes_vm=True,
    )


if __name__ == "__main__":
    main()
