# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qemu_vm module's manager: brings one VM on this host to the requested state.

Private to the livemig.qemu collection.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import (
    _blockdev, _files, _firmware, _incoming, _nbdexport, _probe, _qemuimg, _taps, _vmhost)
from ansible_collections.livemig.qemu.plugins.module_utils._command import Program
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._qemuargv import build_argv
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import (
    HostRecord, load_record, remove_record, save_record, updating)
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import Disk, SpecError, VMSpec, parse_spec

STALE = "postmigrate"
MIB = 1024 * 1024
# Failures of these steps are about the VM: their messages get its name in front.
VM_FAILURES = (SpecError, _probe.ProbeError, _vmhost.VMHostError, _qemuimg.ImageError, _taps.TapError, QMPError,
               _files.PrivacyError)


def run(task: Any) -> dict[str, Any]:
    """qemu_vm: bring the VM on this host to the state asked for."""
    lifecycle = VMLifecycle(task)
    try:
        getattr(lifecycle, f"ensure_{task.params['state']}")()
    except _CheckModeStop:
        pass
    except VM_FAILURES as exc:
        raise lifecycle.failure(str(exc)) from exc
    result = lifecycle.finish()
    if task.params["state"] == "incoming" and not (task.check_mode and result["changed"]):
        receive(task, result)
    return result


def receive(task: Any, result: dict[str, Any]) -> None:
    """A target QEMU's two ends, in the same call that started it: the NBD exports the source's mirrors write
    into (nbd_export) and the listener of the migration (listen), as qemu_nbd_export and qemu_migrate_incoming
    would set them up."""
    ends = (("nbd", task.params.get("nbd_export"), _nbdexport.run, "present"),
            ("incoming", task.params.get("listen"), _incoming.run, "listening"))
    for key, options, handler, state in ends:
        if options:
            part = handler(task.with_params(**options, state=state))
            changed = part.pop("changed")
            result["changed"] = result["changed"] or changed
            result[key] = part


class _CheckModeStop(Exception):
    """In check mode, the first change ends the run: the result says what would happen."""


class VMLifecycle:
    def __init__(self, task: Any):
        self.task = task
        self.check_mode = task.check_mode
        self.params = task.params
        self.paths = task.paths
        self.record = load_record(self.paths.record, self.paths.vm)
        self.pid = _vmhost.running_pid(self.paths)
        self.result: dict[str, Any] = {"changed": False, "sockets": {
            "qmp": self.paths.qmp, "job_qmp": self.paths.job_qmp, "serial": self.paths.serial}}

    def failure(self, msg: str) -> LivemigError:
        prefix = f"VM {self.paths.vm}: "  # a spec error names the VM already
        return LivemigError(msg if msg.startswith(prefix) else prefix + msg)

    def fail(self, msg: str) -> None:
        raise self.failure(msg)

    def finish(self) -> dict[str, Any]:
        record = self.record
        self.result.update(owner=bool(record and record.owner), pid=self.pid,
                           machine=record.machine if record else None, accel=record.accel if record else None)
        self.result.setdefault("status", self.status() if self.pid and not self.check_mode else None)
        return self.result

    def status(self) -> str | None:
        return _vmhost.vm_status(self.paths, self.params["connect_timeout"])

    def spec(self) -> VMSpec:
        return parse_spec(self.paths.vm, self.params["spec"])

    # -- states -------------------------------------------------------------------------------

    def ensure_running(self) -> None:
        spec = self.spec()
        self.result["disks"] = self.describe_disks(spec)
        if self.pid:
            self.adopt_running_qemu()
            return
        if not (self.record and self.record.owner) and not self.params["claim"]:
            self.fail("this host does not own the VM; start it with claim=true only when no other host owns it "
                      "(playbooks/start.yml checks every host), or migrate it here")
        self.check_memory(spec)
        self.changed()
        qemu = self.task.qemu()
        machine, accel = self.pinned_abi(qemu, spec)
        uefi = self.firmware(qemu, spec, machine)
        self.check_devices(spec, accel)
        _files.private_dir(*self.paths.private_dirs)
        created = self.create_missing_disks(spec, uefi)
        self.launch(qemu, spec, machine, accel, incoming=False, created=created, uefi=uefi)
        self.record.owner = True
        self.record.handed_over_to = None
        save_record(self.paths.record, self.record)

    def adopt_running_qemu(self) -> None:
        status = self.status()
        self.result["status"] = status
        if status == "inmigrate":
            self.fail("QEMU is waiting for an incoming migration; it runs once that migration completes")
        if status == STALE:
            self.fail("this QEMU was migrated away and is stale (post-migrate); remove it with state=absent")
        if self.record and self.record.owner:
            return
        if not self.params["migration_target"]:
            self.fail(f"QEMU runs here ({status}) but this host does not own the VM")
        with QMPSession(self.paths.qmp, connect_timeout=self.params["connect_timeout"]) as session:
            incoming = session.execute("query-migrate").get("status")
            if incoming != "completed":
                self.fail(f"the incoming migration has not completed (status {incoming}): the source may still "
                          "hold part of the VM (post-copy), so this host does not take it over yet")
            self.changed()
            if status == "paused":  # arrived while no resume watcher ran: let it run here now
                _incoming.let_run(self.paths, session)
                self.result["status"] = session.execute("query-status")["status"]
            _nbdexport.close(session)  # an owner's disks take no writes from outside (the watcher closed them)
        with updating(self.paths.record, self.paths.vm) as record:
            record.owner = True
            record.volatile.pop("incoming", None)
            record.volatile.pop("nbd", None)
        self.record = load_record(self.paths.record, self.paths.vm)

    def ensure_incoming(self) -> None:
        spec = self.spec()
        self.result["disks"] = self.describe_disks(spec)
        if self.pid:
            status = self.status()
            self.result["status"] = status
            if status != "inmigrate":
                self.fail(f"the VM already runs on this host ({status}); it cannot be a migration target here")
            return
        if self.record and self.record.owner:
            self.fail("this host owns the VM; it cannot also be the target of its migration")
        if not self.params["migration_target"]:
            self.fail("state=incoming is only for a migration target: set migration_target=true")
        self.check_memory(spec)
        self.changed()
        qemu = self.task.qemu()
        uefi = self.firmware(qemu, spec, self.params["machine"])
        self.check_devices(spec, self.params["accel"])
        _files.private_dir(*self.paths.private_dirs)
        created = self.copied_local_disks(spec) if self.params["keep_disks"] else self.fresh_local_disks(spec, uefi)
        self.record = HostRecord(vm=self.paths.vm)
        self.launch(qemu, spec, self.params["machine"], self.params["accel"], incoming=True, created=created,
                    uefi=uefi)
        self.record.volatile["incoming"] = True
        if self.params["migration_id"]:
            self.record.migration = {"id": self.params["migration_id"], "role": "target"}
        save_record(self.paths.record, self.record)

    def ensure_stopped(self) -> None:
        if not self.pid:
            return
        self.changed()
        self.result["stopped_by"] = _vmhost.stop_qemu(self.paths, self.pid, self.params["powerdown_timeout"])
        self.pid = None
        self.result["status"] = None
        self.forget_volatile()

    def forget_volatile(self) -> None:
        """This host's QEMU is gone: so are its taps (the kernel removes them with it); remove any that survived
        and forget this host's volatile keys. Never touches another host's."""
        if not self.record:
            return
        taps = self.record.volatile.get("taps") or {}
        if taps:
            self.result["taps_removed"] = _taps.remove_leftovers(self.ip(), taps)
        self.record.volatile = {}
        save_record(self.paths.record, self.record)

    def ensure_absent(self) -> None:
        if self.pid:
            self.changed()
            self.result["stopped_by"] = _vmhost.stop_qemu(self.paths, self.pid, 0)
            self.pid = None
        self.result["status"] = None
        if self.record and self.record.volatile.get("taps") and not self.check_mode:
            self.forget_volatile()
        if not self.params["keep_disks"]:
            for path in self.local_disk_paths():
                if os.path.exists(path):
                    self.changed()
                    _files.remove(path)
        if self.record is not None:
            self.changed()
            remove_record(self.paths.record)
            self.record = None
        if not self.check_mode:
            _vmhost.clean_run_files(self.paths)
            _files.remove(self.paths.log)
            _files.remove_empty_dirs(self.paths.vm_run_dir, self.paths.vm_state_dir)

    # -- helpers ------------------------------------------------------------------------------

    def changed(self) -> None:
        """Mark the task changed; in check mode, stop here and report what would happen."""
        self.result["changed"] = True
        if self.check_mode:
            raise _CheckModeStop

    def check_memory(self, spec: VMSpec) -> None:
        available = _probe.host_memory()["available_mb"]
        if spec.memory_mb > available:
            self.fail(f"needs {spec.memory_mb} MiB of memory but this host has only {available} MiB available")

    def pinned_abi(self, qemu: Program, spec: VMSpec) -> tuple[str, str]:
        machine = self.params["machine"] or (self.record.machine if self.record else None)
        accel = self.params["accel"] or (self.record.accel if self.record else None)
        if machine and accel:
            return machine, accel
        if not accel:
            accel = spec.accel if spec.accel != "auto" else ("kvm" if _probe.kvm_can_boot(qemu)[0] else "tcg")
        if not machine:
            with _probe.Probe(qemu.path) as session:
                machine = _probe.resolve_machine(_probe.machine_types(session), spec.machine)
        return machine, accel

    def describe_disks(self, spec: VMSpec) -> list[dict[str, Any]]:
        return [{"name": disk.name, "path": self.paths.disk(disk), "shared": disk.shared, "kind": disk.kind,
                 "exists": os.path.exists(self.paths.disk(disk))} for disk in spec.volumes]

    def local_disk_paths(self) -> list[str]:
        """The local images this host may delete: never a block device, which belongs to the operator."""
        spec_raw = self.params.get("spec")
        if spec_raw:
            return [self.paths.disk(disk) for disk in self.spec().local_volumes if disk.kind != "block"]
        prefix = f"{self.paths.vm}-"
        directory = self.paths.image_dir
        if not os.path.isdir(directory):
            return []
        return [os.path.join(directory, entry) for entry in sorted(os.listdir(directory))
                if entry.startswith(prefix) and entry.rsplit(".", 1)[-1] in ("qcow2", "raw")
                and "-" not in entry[len(prefix):].rsplit(".", 1)[0]]

    def ip(self) -> Program:
        return self.task.program("ip", "install iproute2 (the VM has NICs)")

    def firmware(self, qemu: Program, spec: VMSpec, machine: str) -> dict[str, Any]:
        if spec.firmware != "uefi":
            return {}
        uefi = _firmware.find_uefi(machine, qemu.path)
        if not uefi["found"]:
            raise _vmhost.VMHostError(f"firmware uefi: {uefi['reason']}")
        return uefi

    def check_block_device(self, disk: Disk) -> None:
        problem = _blockdev.problem(disk.path, disk.size_bytes, check_unused=True)
        if problem:
            raise _vmhost.VMHostError(f"disk {disk.name}: {problem}")

    def check_devices(self, spec: VMSpec, accel: str) -> None:
        """What QEMU would fail on with a less clear message, or silently get wrong (a tap name someone else took)."""
        if spec.cdrom and not os.path.isfile(spec.cdrom):
            raise _vmhost.VMHostError(f"CD-ROM image {spec.cdrom} not found on this host")
        problems = _taps.host_problems(self.ip(), spec, accel) if spec.nics else []
        if problems:
            raise _vmhost.VMHostError("; ".join(problems))

    def create_missing_disks(self, spec: VMSpec, uefi: dict[str, Any]) -> list[str]:
        created = []
        for disk in spec.volumes:
            path = self.paths.disk(disk)
            if disk.kind == "block":
                self.check_block_device(disk)
            elif not os.path.exists(path):
                if disk.shared:
                    raise _vmhost.VMHostError(f"shared disk {disk.name} not found at {path}")
                if disk.kind == "nvram":
                    self.create_nvram(path, uefi)
                else:
                    self.create_image(path, disk)
                created.append(path)
            elif not disk.shared:
                _files.keep_private(path)  # an image of an older version may be 0644
        return created

    def create_nvram(self, path: str, uefi: dict[str, Any]) -> None:
        """The VM's own UEFI variable store, from the firmware's template, at its first start."""
        partial = f"{path}.partial"
        _files.remove(partial)
        _files.private_file(partial)
        shutil.copyfile(uefi["vars_template"], partial)
        os.replace(partial, path)

    def fresh_local_disks(self, spec: VMSpec, uefi: dict[str, Any]) -> list[str]:
        """The target's local volumes start empty, sized like the source's; shared ones and block devices must
        already be there."""
        created = []
        for disk in spec.volumes:
            path = self.paths.disk(disk)
            if disk.kind == "block":
                self.check_block_device(disk)
                continue
            if disk.shared:
                if not os.path.exists(path):
                    raise _vmhost.VMHostError(f"shared disk {disk.name} is not visible on this host at {path}")
                continue
            _files.remove(path)
            size = int(self.params["disk_sizes"].get(disk.name) or 0)
            if disk.kind == "nvram" and not size:  # the planner checked that both hosts' templates have one size
                size = uefi["vars_size"]
            self.create_image(path, disk, size)
            created.append(path)
        return created

    def create_image(self, path: str, disk: Disk, size: int = 0) -> None:
        _qemuimg.create(self.task.tool("qemu-img"), path, disk.format, size or disk.size_bytes)

    def copied_local_disks(self, spec: VMSpec) -> list[str]:
        """The stateful path copies the volumes before the target starts: use them as they are."""
        missing = [disk.name for disk in spec.volumes if not os.path.exists(self.paths.disk(disk))]
        if missing:
            raise _vmhost.VMHostError(f"keep_disks=true but these disks are missing on this host: {', '.join(missing)}")
        return []

    def launch(self, qemu: Program, spec: VMSpec, machine: str, accel: str, incoming: bool,
               created: list[str], uefi: dict[str, Any]) -> None:
        argv = build_argv(spec, self.paths, qemu.path, machine, accel, incoming, uefi.get("code"))
        self.result["argv"] = argv
        taps: dict[str, str] = {}
        try:
            self.pid = _vmhost.start_qemu(qemu.runner, argv, self.paths)
            taps = _taps.attach(self.ip(), spec) if spec.nics else {}
            with QMPSession(self.paths.qmp, connect_timeout=self.params["connect_timeout"]) as session:
                self.result["status"] = session.execute("query-status")["status"]
        except (_vmhost.VMHostError, _taps.TapError, QMPError):
            if self.pid:
                _vmhost.kill_qemu(self.pid)  # its taps go with it
                self.pid = None
            _files.remove(*created)
            _vmhost.clean_run_files(self.paths)
            raise
        self.record = self.record or HostRecord(vm=self.paths.vm)
        self.record.machine, self.record.accel = machine, accel
        self.record.volatile = {"pid": self.pid, "qmp": self.paths.qmp, "job_qmp": self.paths.job_qmp,
                                "serial": self.paths.serial, "taps": taps}
        self.result["taps"] = taps
