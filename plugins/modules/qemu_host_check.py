#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_host_check
short_description: Check that this host can hold a VM's devices before a move starts
version_added: 0.3.0
description:
  - Reads, for one VM spec, what this host offers and what would keep the VM from running here, so that a move can
    be refused with a clear reason before anything changes on either host.
  - NICs; each bridge exists, is a bridge, is up and has room for the NIC's MTU; each tap name the VM's QEMU would
    open is free (unless this host's QEMU of the VM runs and owns it); C(/dev/net/tun) exists, and under KVM
    C(/dev/vhost-net).
  - UEFI; a firmware descriptor (C(/usr/share/qemu/firmware)) names OVMF code and a variable-store template without
    Secure Boot, and both files exist. Their sizes are returned, because a live move needs equal sizes on both
    hosts.
  - Block devices; each disk with a C(path) is a block device at least the disk's size, and, unless the VM runs
    here, no one holds it (mounted, LVM, md).
  - CD-ROM; the image's size and SHA-256, to compare with the other host's.
  - Room; free space in the image and state directories, and the bytes each local image takes here.
  - Address; with O(address), whether a listener can bind it here (a host that does not have the address cannot).
  - TLS; with O(tls_dir), whether QEMU's x509 files are all there, private and root's (or this user's), and the
    public certificates, for the controller to compare with the other host's. Keys are never read.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.read_only
  - livemig.qemu.attributes.action_group
options:
  spec:
    description: The VM description (one C(livemig_vms) entry).
    type: dict
    required: true
  accel:
    description: The accelerator the VM runs with or will run with; with V(kvm), virtio NICs need C(/dev/vhost-net).
    type: str
    choices: [kvm, tcg]
  machine:
    description: The versioned machine type, to pick the firmware built for it; any x86_64 machine when left out.
    type: str
  address:
    description: The host's migration address (C(livemig_migration_address)), to check that a listener can bind it.
    type: str
  tls_dir:
    description: The host's TLS directory in QEMU's x509 layout (C(livemig_tls_dir)), to check.
    type: path
requirements:
  - iproute2 (C(ip)) when the VM has NICs
author:
  - livemig.qemu contributors (@livemig)
notes:
  - The CD-ROM image is read in full to compute its checksum.
"""

EXAMPLES = r"""
- name: Check that the target can hold the VM's devices
  livemig.qemu.qemu_host_check:
    name: web1
    host:
      run_dir: /run/livemig
      image_dir: /var/lib/livemig/images
    spec: "{{ livemig_vms.web1 }}"
    accel: kvm
  delegate_to: hv2
  register: target_check

- name: Stop when it cannot
  ansible.builtin.fail:
    msg: "{{ target_check.problems | join('; ') }}"
  when: target_check.problems | length > 0
"""

RETURN = r"""
problems:
  description: What keeps the VM from running on this host, each a sentence saying what to fix; empty when nothing.
  returned: always
  type: list
  elements: str
  sample: ["NIC lan: bridge br0 does not exist on this host: create it (the same name on every host)"]
runs_here:
  description: Whether this host's QEMU of the VM runs.
  returned: always
  type: bool
volumes:
  description:
    - Per volume (the disks, and C(nvram) with UEFI) C(kind) (V(file), V(block) or V(nvram)), C(path), C(shared),
      C(exists), C(allocated) (bytes a file takes here) and C(size) (a block device disk's size).
  returned: always
  type: dict
  sample: {"root": {"kind": "file", "path": "/var/lib/livemig/images/web1-root.qcow2", "shared": false,
            "exists": true, "allocated": 1073741824}}
firmware:
  description: The UEFI firmware found (C(found), C(code), C(vars_template), C(code_size), C(vars_size)), or why none.
  returned: when the spec has firmware uefi
  type: dict
cdrom:
  description: The CD-ROM image on this host, C(path), C(exists), C(size) and C(sha256).
  returned: when the spec has a cdrom
  type: dict
room:
  description: Free bytes (C(free)) and the filesystem (C(device)) of the image and state directories.
  returned: always
  type: dict
address:
  description:
    - C(address) as given, C(bindable) (whether a socket could bind it on this host, on a free port) and, when not,
      C(reason), e.g. that this host does not have the address (C(EADDRNOTAVAIL)).
  returned: when O(address) is given
  type: dict
  sample: {"address": "192.0.2.12", "bindable": false,
           "reason": "this host does not have that address (EADDRNOTAVAIL)"}
tls:
  description:
    - C(dir) as given, C(exists), C(problems) (missing files, a mode open to group or others, an owner other than
      root or this user, DH parameters that are not PEM), and the PEM text of C(ca-cert.pem) (C(ca_pem)),
      C(server-cert.pem) (C(cert_pem)) and C(client-cert.pem) (C(client_cert_pem)), V(null) when missing. Never a
      key.
    - These problems are not in the module's own RV(problems); the controller weighs them with the other host's.
  returned: when O(tls_dir) is given
  type: dict
  sample: {"dir": "/etc/livemig/tls", "exists": true, "problems": [], "ca_pem": "-----BEGIN CERTIFICATE-----...",
           "cert_pem": "-----BEGIN CERTIFICATE-----...", "client_cert_pem": "-----BEGIN CERTIFICATE-----..."}
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _hostcheck
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec


def main() -> None:
    run_module(
        vm_argument_spec(
            spec={"type": "dict", "required": True},
            accel={"type": "str", "choices": ["kvm", "tcg"]},
            machine={"type": "str"},
            address={"type": "str"},
            tls_dir={"type": "path"},
        ),
        _hostcheck.run,
        needs_qmp=False,
        supports_check_mode=True,
    )


if __name__ == "__main__":
    main()
