# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What this host's QEMU can do and which VMs this host knows, as the fact `livemig_qemu`.

Private to the livemig.qemu collection. `run` is the qemu_facts module's handler.
"""
from __future__ import annotations

import os
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _probe, _vmhost
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._module import Task
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError
from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record


def known_vms(run_dir: str, image_dir: str | None = None, state_dir: str | None = None) -> dict[str, dict]:
    """The VMs this host has a record of or a pid file for, by name."""
    directories = VMPaths.on_host("", run_dir, image_dir, state_dir)  # the host's, with the usual defaults
    names = set()
    for directory, suffix in ((directories.state_dir, ".json"), (directories.run_dir, ".pid")):
        if os.path.isdir(directory):
            names.update(entry[:-len(suffix)] for entry in os.listdir(directory)
                         if entry.endswith(suffix) and not entry.startswith("."))
    vms = {}
    for name in sorted(names):
        paths = VMPaths.on_host(name, run_dir, image_dir, state_dir)
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


def run(task: Task) -> dict[str, Any]:
    """The qemu_facts module: the probe's answers (unless probe=false), host memory and the known VMs."""
    params, host = task.params, task.host
    facts: dict[str, Any] = {"memory": _probe.host_memory(), "vms": {}}
    if params["probe"]:
        qemu = task.qemu()
        try:
            facts.update(_probe.host_facts(qemu, params["check_kvm"]))
        except (_probe.ProbeError, QMPError) as exc:
            raise LivemigError(f"cannot ask this host's QEMU: {exc}") from None
    if host["run_dir"]:
        facts["vms"] = known_vms(host["run_dir"], host.get("image_dir"), host.get("state_dir"))
    return {"changed": False, "ansible_facts": {"livemig_qemu": facts}}
