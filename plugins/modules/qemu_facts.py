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
  qemu_binary:
    description: QEMU system emulator to ask.
    type: str
    default: qemu-system-x86_64
  run_dir:
    description: This host's run directory for VMs (where their sockets and pid files are).
    type: path
  image_dir:
    description: This host's image directory. Defaults to O(run_dir).
    type: path
  state_dir:
    description: This host's directory of VM records. Defaults to O(image_dir).
    type: path
  check_kvm:
    description: Boot a tiny KVM guest to tell whether KVM is usable. Takes a few milliseconds where KVM works.
    type: bool
    default: true
  probe:
    description: Start the throw-away QEMU. When false, only the VMs and host memory are reported.
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
        - C(memory) (C(total_mb), C(available_mb));
        - C(vms), a dict by VM name of C(running), C(status), C(owner), C(machine), C(accel), C(pid),
          C(handed_over_to).
      returned: always
      type: dict
"""

import os

from ansible_collections.livemig.qemu.plugins.module_utils import _probe, _vmhost
from ansible_collections.livemig.qemu.plugins.module_utils._module import new_module, qemu_system
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError
from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import VMPaths


def known_vms(image_dir: str, run_dir: str, state_dir: str) -> dict:
    names = set()
    for directory, suffix in ((state_dir, ".json"), (run_dir, ".pid")):
        if os.path.isdir(directory):
            names.update(entry[:-len(suffix)] for entry in os.listdir(directory)
                         if entry.endswith(suffix) and not entry.startswith("."))
    vms = {}
    for name in sorted(names):
        paths = VMPaths(name, image_dir, run_dir, state_dir)
        record = load_record(paths.record, name)
        pid = _vmhost.running_pid(paths)
        try:
            status = _vmhost.vm_status(paths, timeout=5) if pid else None
        except QMPError as exc:
            status = f"unknown ({exc})"
        vms[name] = {"running": pid is not None, "status": status, "pid": pid,
                     "owner": bool(record and record.owner),
                     "machine": record.machine if record else None, "accel": record.accel if record else None,
                     "handed_over_to": record.handed_over_to if record else None}
    return vms


def main() -> None:
    module = new_module(
        {
            "qemu_binary": {"type": "str", "default": "qemu-system-x86_64"},
            "run_dir": {"type": "path"},
            "image_dir": {"type": "path"},
            "state_dir": {"type": "path"},
            "check_kvm": {"type": "bool", "default": True},
            "probe": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    facts: dict = {"memory": _probe.host_memory(), "vms": {}}
    try:
        if params["probe"]:
            facts.update(_probe.host_facts(qemu_system(module), params["check_kvm"]))
    except (_probe.ProbeError, QMPError) as exc:
        module.fail_json(msg=f"cannot ask this host's QEMU: {exc}")
    if params["run_dir"]:
        image_dir = params["image_dir"] or params["run_dir"]
        facts["vms"] = known_vms(image_dir, params["run_dir"], params["state_dir"] or image_dir)
    module.exit_json(changed=False, ansible_facts={"livemig_qemu": facts})


if __name__ == "__main__":
    main()
