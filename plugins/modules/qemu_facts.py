#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_facts
short_description: What this host's QEMU can do, and the VMs this host knows
version_added: 0.2.0
description:
  - Starts a throw-away QEMU (C(-machine none -S)) and asks it for its version, machine types, CPU models, migration
    capabilities and parameters.
  - Tells whether KVM really boots a guest here (not only whether C(/dev/kvm) opens), and which accelerator
    C(accel=auto) resolves to.
  - Lists the VMs this host has a record of or runs, with their state, ownership, machine type and accelerator.
extends_documentation_fragment:
  - livemig.qemu.attributes
  - livemig.qemu.attributes.read_only
  - livemig.qemu.attributes.action_group
  - livemig.qemu.attributes.facts
options:
  host:
    description:
      - This host's locations for VMs and its QEMU, in one dict, for example the one the
        C(livemig.qemu.live_migration) role builds from a host's C(livemig_run_dir), C(livemig_image_dir),
        C(livemig_state_dir), C(livemig_shared_dir) and C(livemig_qemu_binary).
      - Give either this or the separate options O(qemu_binary), O(run_dir), O(image_dir) and O(state_dir), or
        none of them.
    type: dict
    suboptions:
      run_dir:
        description: This host's run directory for VMs (where their sockets and pid files are).
        type: path
        required: true
      image_dir:
        description: This host's image directory. Defaults to O(host.run_dir).
        type: path
      state_dir:
        description: This host's directory of VM records. Defaults to O(host.image_dir).
        type: path
      shared_dir:
        description: This host's path to shared storage. Not used here; accepted so that the same dict serves every
          module.
        type: path
      qemu_binary:
        description: QEMU system emulator to ask.
        type: str
        default: qemu-system-x86_64
  qemu_binary:
    description: QEMU system emulator to ask, as O(host.qemu_binary).
    type: str
    default: qemu-system-x86_64
  run_dir:
    description:
      - This host's run directory for VMs (where their sockets and pid files are), as O(host.run_dir).
      - Without it (and without O(host)), no VMs are listed.
    type: path
  image_dir:
    description: This host's image directory, as O(host.image_dir). Defaults to O(run_dir).
    type: path
  state_dir:
    description: This host's directory of VM records, as O(host.state_dir). Defaults to O(image_dir).
    type: path
  check_kvm:
    description: Boot a tiny guest (a boot sector) under TCG and under KVM to tell whether KVM is usable. KVM that
      takes more than 3 times as long as TCG plus 0.4 s, as an emulated or deeply nested KVM does, is not. Takes
      well under a second where KVM works.
    type: bool
    default: true
  probe:
    description:
      - Start the throw-away QEMU. When false, only the VMs and host memory are reported.
      - With a run directory, its answers are kept there and reused until the binary changes (path, mtime, size),
        the host reboots or C(/dev/kvm) changes.
    type: bool
    default: true
requirements:
  - python >= 3.11
  - qemu.qmp (on the managed host)
  - QEMU, O(qemu_binary) (Debian package qemu-system-x86), for O(probe=true)
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Gather QEMU facts
  livemig.qemu.qemu_facts:
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images

- name: Only list the VMs, with the host's locations in one dict
  livemig.qemu.qemu_facts:
    host:
      run_dir: /run/livemig
      image_dir: /var/lib/livemig/images
    probe: false

- name: Show the QEMU version
  ansible.builtin.debug:
    msg: "{{ livemig_qemu.version }} with {{ livemig_qemu.machines | length }} machine types"
"""

RETURN = r"""
ansible_facts:
  description: Facts under the key C(livemig_qemu).
  returned: always
  type: dict
  contains:
    livemig_qemu:
      description:
        - C(version), C(version_info), C(package), C(binary);
        - C(machines) (C(name), C(alias), C(default), C(deprecated));
        - C(cpu_models) (C(name), C(migration_safe), C(runnable), C(static));
        - C(migration_capabilities) (names) and C(migration_parameters);
        - C(state_transports), how this QEMU can save and load a VM state file (C(exec), and C(file) from QEMU 8.2 on);
        - C(multifd_compressions), the multifd compression methods this QEMU was built with (C(none), C(zlib), C(zstd));
        - C(accelerators) (C(kvm.usable), C(kvm.reason), C(tcg.usable)) and C(auto_accel);
        - C(probe_cached), true when these answers come from an earlier probe of the same binary (kept in
          C(<run_dir>/.qemu-probe/) by the binary's path, mtime and size, the boot id and C(/dev/kvm));
        - C(memory) (C(total_mb), C(available_mb));
        - C(vms), a dict by VM name of C(running), C(status), C(migrate_status) (QEMU's migration status), C(owner),
          C(machine), C(accel), C(pid), C(migration) (the record's markers of the last move - C(id), C(role),
          C(peer), C(phase) on a source, C(ran) on a target that let the VM run), C(handed_over_to) and
          C(legacy_layout), true for a VM whose record or running QEMU livemig.qemu 0.3 left
          in its flat file layout (C(<state_dir>/<name>.json), C(<run_dir>/<name>.qmp)); the next module run on
          the VM moves its record into C(<state_dir>/<name>/), and refuses while that old QEMU runs.
      returned: always
      type: dict
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _facts
from ansible_collections.livemig.qemu.plugins.module_utils._module import DEFAULT_QEMU, HOST_OPTION, run_module


def main() -> None:
    run_module(
        {
            "host": HOST_OPTION,
            "qemu_binary": {"type": "str", "default": DEFAULT_QEMU},
            "run_dir": {"type": "path"},
            "image_dir": {"type": "path"},
            "state_dir": {"type": "path"},
            "check_kvm": {"type": "bool", "default": True},
            "probe": {"type": "bool", "default": True},
        },
        _facts.run,
        host_required=False,
        mutually_exclusive=[("host", "qemu_binary")],
        supports_check_mode=True,
    )


if __name__ == "__main__":
    main()
