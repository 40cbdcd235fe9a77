#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_storage_check
short_description: Find out which of a VM's disk images are the same file on two hosts
version_added: 0.2.0
description:
  - Detects shared storage instead of trusting a flag. The source host leaves a token file next to each disk image
    with O(state=marked). The target host looks for the same token next to its own path of that image with
    O(state=checked). The source removes the tokens again with O(state=unmarked).
  - A disk whose token the target reads back is the same file on both hosts, whatever each host calls the path.
  - The token files are C(.<image file name>.livemig-token), a few bytes each; nothing else is written.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
options:
  state:
    description:
      - V(marked) writes a new random token next to every disk image of the VM that exists on this host.
      - V(checked) reads the tokens on this host and reports, per disk, whether it is the same file.
      - V(unmarked) removes the token files from this host.
    type: str
    choices: [marked, checked, unmarked]
    required: true
  spec:
    description:
      - The VM description (one C(livemig_vms) entry); only its C(disks) are used, and with C(firmware=uefi) its
        variable store C(nvram).
      - A disk on a block device (C(path)) gets no token (none fits beside a device node); it is reported with the
        disk's size and as not the same file, since its sharing is declared, not detected.
    type: dict
    required: true
  token:
    description: The token returned by O(state=marked). Required for O(state=checked).
    type: str
requirements:
  - qemu-img (Debian package qemu-utils)
author:
  - livemig.qemu contributors (@livemig)
notes:
  - In check mode, O(state=marked) and O(state=unmarked) change nothing, so O(state=checked) finds no token. Run
    these tasks with C(check_mode=false) to detect shared storage during a check-mode run, as the
    C(livemig.qemu.live_migration) role does.
"""

EXAMPLES = r"""
- name: Mark the images on the source
  livemig.qemu.qemu_storage_check:
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    shared_dir: /mnt/vmstore
    spec: "{{ livemig_vms.web1 }}"
    state: marked
  register: marks

- name: Look for the marks on the target, with its locations in one dict
  livemig.qemu.qemu_storage_check:
    name: web1
    host:
      run_dir: /run/livemig
      image_dir: /srv/images
      shared_dir: /net/vmstore
    spec: "{{ livemig_vms.web1 }}"
    state: checked
    token: "{{ marks.token }}"
  delegate_to: hv2
  register: storage

- name: Remove the marks
  livemig.qemu.qemu_storage_check:
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    shared_dir: /mnt/vmstore
    spec: "{{ livemig_vms.web1 }}"
    state: unmarked
"""

RETURN = r"""
token:
  description: The random token written (O(state=marked)) or looked for (O(state=checked)).
  returned: when state is marked or checked
  type: str
disks:
  description:
    - Per disk name, C(path) on this host, C(exists) (the image exists here), for O(state=marked) the image's
      C(virtual_size) in bytes, and for O(state=checked) C(same_file) (this host reads the source's token next
      to it).
  returned: always
  type: dict
  sample: {"root": {"path": "/mnt/vmstore/web1-root.qcow2", "exists": true, "same_file": true}}
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _storage
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec


def main() -> None:
    run_module(
        vm_argument_spec(
            state={"type": "str", "choices": ["marked", "checked", "unmarked"], "required": True},
            spec={"type": "dict", "required": True},
            token={"type": "str", "no_log": False},
        ),
        _storage.run,
        required_if=[("state", "checked", ["token"])],
        supports_check_mode=True,
    )


if __name__ == "__main__":
    main()
