# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What this host's QEMU can do and which VMs this host knows, as the fact `livemig_qemu`.

Private to the livemig.qemu collection. `run` is the qemu_facts module's handler.
"""
from __future__ import annotations

import os
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _probe, _probecache
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._module import Task
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record, qemu_pid


def known_vms(run_dir: str, image_dir: str | None = None, state_dir: str | None = None) -> dict[str, dict]:
    """The VMs this host has a record of or a pid file for, by name. `legacy_layout` marks a VM whose record, or
    running QEMU, livemig.qemu 0.3 left in its flat layout (`<state_dir>/<vm>.json`, `<run_dir>/<vm>.qmp`): the
    next module run on that VM moves the record into the VM's directory, or refuses while that QEMU runs."""
    vms = {}
    for name in sorted(_candidates(VMPaths.on_host("", run_dir, image_dir, state_dir))):
        paths = VMPaths.on_host(name, run_dir, image_dir, state_dir)
        legacy = not (os.path.exists(paths.record) or os.path.exists(paths.pidfile))
        where = paths.legacy if legacy else paths
        pid = qemu_pid(where.pidfile, where.qmp)
        if legacy and pid is None and not os.path.exists(where.record):
            continue  # not a VM: a stray entry, or a stale pid file of the old layout
        record = load_record(where.record, name)
        status, migrate_status = qemu_state(where) if pid else (None, None)
        vms[name] = {"running": pid is not None, "status": status, "migrate_status": migrate_status, "pid": pid,
                     "owner": bool(record and record.owner),
                     "machine": record.machine if record else None, "accel": record.accel if record else None,
                     "handed_over_to": record.handed_over_to if record else None,
                     "migration": record.migration if record else {}, "legacy_layout": legacy}
    return vms


def _candidates(host: VMPaths) -> set[str]:
    """Names that may be VMs: the directories in the host's state and run directories, and the names of 0.3's
    records (`<vm>.json`) and pid files (`<vm>.pid`)."""
    names = set()
    for directory, old_suffix in ((host.state_dir, ".json"), (host.run_dir, ".pid")):
        for entry in os.listdir(directory) if os.path.isdir(directory) else []:
            if entry.startswith("."):
                continue
            if os.path.isdir(os.path.join(directory, entry)):
                names.add(entry)
            elif entry.endswith(old_suffix):
                names.add(entry[:-len(old_suffix)])
    return names


def qemu_state(paths: VMPaths) -> tuple[str, str | None]:
    """(run state, migration status) of the VM's QEMU; the run state says why when QEMU does not answer."""
    try:
        with QMPSession(paths.qmp, connect_timeout=5) as session:
            return session.execute("query-status")["status"], session.execute("query-migrate").get("status")
    except QMPError as exc:
        return f"unknown ({exc})", None


def run(task: Task) -> dict[str, Any]:
    """The qemu_facts module: the probe's answers (unless probe=false), host memory and the known VMs."""
    params, host = task.params, task.host
    facts: dict[str, Any] = {"memory": _probe.host_memory(), "vms": {}}
    if params["probe"]:
        qemu = task.qemu()
        try:
            answers, cached = _probecache.cached_facts(host["run_dir"], qemu.path, params["check_kvm"],
                                                       lambda: _probe.host_facts(qemu, params["check_kvm"]))
            facts.update(answers, probe_cached=cached)
        except (_probe.ProbeError, QMPError) as exc:
            raise LivemigError(f"cannot ask this host's QEMU: {exc}") from None
    if host["run_dir"]:
        facts["vms"] = known_vms(host["run_dir"], host.get("image_dir"), host.get("state_dir"))
    return {"changed": False, "ansible_facts": {"livemig_qemu": facts}}
