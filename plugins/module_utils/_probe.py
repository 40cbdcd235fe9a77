# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What this host's QEMU can do, asked from a throw-away QEMU (`-machine none -S`).

The module finds the QEMU binary and passes it in as a Program (_command.py).

Private to the livemig.qemu collection.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._command import CommandTimeout, Program
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._schema import schema_features
from ansible_collections.livemig.qemu.plugins.module_utils._statefile import state_transports

# A 512-byte boot sector that writes 1 to the isa-debug-exit port: QEMU exits with status 3.
_BOOT_SECTOR = bytes([0xBA, 0xF4, 0x00, 0xB0, 0x01, 0xEE, 0xF4]).ljust(510, b"\0") + b"\x55\xaa"
_BOOT_EXIT_STATUS = 3
# KVM is usable when its boot sector takes at most this many times TCG's, plus this many seconds.
KVM_SLOWDOWN = 3.0
KVM_MARGIN = 0.4


class ProbeError(LivemigError):
    """This host's QEMU cannot be started or asked."""


class Probe:
    """A paused QEMU with no machine, only to answer questions over QMP.

    It runs while it is asked, so it is a child process of its own, not a run of a Program. `binary` is the
    path the module found.
    """

    def __init__(self, binary: str, accel: str = "tcg"):
        self.binary = binary
        self.accel = accel
        self._dir = tempfile.mkdtemp(prefix="livemig-probe-")
        self._process: subprocess.Popen | None = None
        self.session: QMPSession | None = None

    def __enter__(self) -> QMPSession:
        socket_path = os.path.join(self._dir, "qmp")
        argv = [self.binary, "-machine", "none", "-accel", self.accel, "-S", "-nodefaults", "-no-user-config",
                "-display", "none", "-chardev", f"socket,id=qmp,path={socket_path},server=on,wait=off",
                "-mon", "chardev=qmp,mode=control"]
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while not os.path.exists(socket_path):
            if self._process.poll() is not None or time.monotonic() > deadline:
                stderr = self._stop()
                raise ProbeError(f"probe QEMU ({self.binary}, accel {self.accel}) did not start: {stderr.strip()}")
            time.sleep(0.01)
        try:
            self.session = QMPSession(socket_path, connect_timeout=30).connect()
        except QMPError as exc:
            self._stop()
            raise ProbeError(f"probe QEMU does not answer on QMP: {exc}") from exc
        return self.session

    def _stop(self) -> str:
        stderr = ""
        if self.session is not None:
            self.session.close()
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            stderr = self._process.communicate()[1].decode(errors="replace")
        shutil.rmtree(self._dir, ignore_errors=True)
        return stderr

    def __exit__(self, *exc: object) -> None:
        self._stop()


def kvm_can_boot(qemu: Program, timeout: float = 10.0) -> tuple[bool, str]:
    """Whether KVM really runs guests here, not only whether /dev/kvm opens: a boot sector under KVM must not take
    much longer than under TCG.

    On working KVM both take about as long as QEMU's own start. Where KVM is emulated or nested so that every exit
    crawls (a boot sector takes seconds), a real guest would not boot, and TCG is the better choice; the comparison
    holds on a loaded host too, where both slow down alike.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="livemig-kvm-") as directory:
        image = os.path.join(directory, "boot.img")
        with open(image, "wb") as handle:
            handle.write(_BOOT_SECTOR)
        try:
            tcg = _boot_seconds(qemu, "tcg", image, timeout)
            limit = min(timeout, KVM_SLOWDOWN * (tcg or timeout) + KVM_MARGIN)
            kvm = _boot_seconds(qemu, "kvm", image, limit)
        except ProbeError as exc:
            return False, str(exc)
    if kvm is None:
        return False, (f"a KVM test guest did not boot within {limit:.1f}s where TCG took "
                       f"{'over ' if tcg is None else ''}{tcg or timeout:.2f}s (KVM unusable or far too slow here)")
    return True, f"a KVM test guest booted in {kvm:.2f}s (TCG {'over ' if tcg is None else ''}{tcg or timeout:.2f}s)"


def _boot_seconds(qemu: Program, accel: str, image: str, timeout: float) -> float | None:
    """Seconds the boot sector took to exit under `accel`; None past `timeout`."""
    started = time.monotonic()
    try:
        result = qemu.run("-machine", "pc", "-accel", accel, "-cpu", "qemu64", "-m", "16", "-nodefaults",
                          "-no-user-config", "-display", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
                          "-drive", f"file={image},format=raw,if=ide", timeout=timeout)
    except CommandTimeout:
        return None
    if result.rc != _BOOT_EXIT_STATUS:
        raise ProbeError(f"a {accel.upper()} test guest failed: {result.stderr.strip()[-300:]}")
    return time.monotonic() - started


def machine_types(session: QMPSession) -> list[dict[str, Any]]:
    return session.execute("query-machines")


def resolve_machine(machines: list[dict[str, Any]], requested: str) -> str:
    """The versioned machine type behind `requested` (an alias such as q35, or a versioned name)."""
    for machine in machines:
        if machine.get("alias") == requested:
            return machine["name"]
    names = {machine["name"] for machine in machines}
    if requested in names:
        return requested
    raise ProbeError(f"machine type {requested!r} is not known to this host's QEMU")


def host_facts(qemu: Program, check_kvm: bool = True) -> dict[str, Any]:
    """Everything the planner and the modules need to know about this host's QEMU."""
    kvm_ok, kvm_reason = kvm_can_boot(qemu) if check_kvm else (False, "not checked")
    accel = "kvm" if kvm_ok else "tcg"
    with Probe(qemu.path, accel) as session:
        version = session.execute("query-version")
        machines = machine_types(session)
        cpus = session.execute("query-cpu-definitions")
        capabilities = session.execute("query-migrate-capabilities")
        parameters = session.execute("query-migrate-parameters")
        transports = state_transports(session)
        compressions = schema_features(session)["multifd_compressions"]
    numbers = version["qemu"]
    return {
        "binary": qemu.path,
        "version": f"{numbers['major']}.{numbers['minor']}.{numbers['micro']}",
        "version_info": numbers,
        "package": version.get("package", "").strip(),
        "machines": sorted(({"name": m["name"], "alias": m.get("alias"), "default": bool(m.get("is-default")),
                             "deprecated": bool(m.get("deprecated"))} for m in machines), key=lambda m: m["name"]),
        "cpu_models": sorted(({"name": c["name"], "migration_safe": c.get("migration-safe"),
                               "runnable": not c.get("unavailable-features"), "static": c.get("static"),
                               "unavailable_features": sorted(c.get("unavailable-features") or [])}
                              for c in cpus), key=lambda c: c["name"]),
        "migration_capabilities": sorted(item["capability"] for item in capabilities),
        "migration_parameters": parameters,
        "state_transports": transports,
        "multifd_compressions": compressions,
        "accelerators": {"kvm": {"usable": kvm_ok, "reason": kvm_reason}, "tcg": {"usable": True}},
        "auto_accel": accel,
    }


def host_memory() -> dict[str, int]:
    values = {}
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            key, _sep, rest = line.partition(":")
            values[key] = int(rest.split()[0]) // 1024
    return {"total_mb": values.get("MemTotal", 0), "available_mb": values.get("MemAvailable", 0)}
