from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils import _probe
from ansible_collections.livemig.qemu.plugins.module_utils._command import CommandTimeout, Completed, Program
from ansible_collections.livemig.qemu.plugins.module_utils._probe import (
    Probe, ProbeError, host_facts, resolve_machine)


@pytest.fixture(scope="module")
def facts():
    return host_facts(conftest.qemu_program(), check_kvm=False)


def test_host_facts_version(facts):
    assert re.fullmatch(r"10\.0\.\d+", facts["version"]), facts["version"]
    assert facts["version_info"]["major"] == 10
    assert os.path.isabs(facts["binary"]) and facts["binary"].endswith("qemu-system-x86_64")


def test_host_facts_without_kvm_check_uses_tcg(facts):
    assert facts["auto_accel"] == "tcg"
    assert facts["accelerators"]["kvm"] == {"usable": False, "reason": "not checked"}
    assert facts["accelerators"]["tcg"]["usable"] is True


def test_host_facts_machines_resolve_q35(facts):
    names = [machine["name"] for machine in facts["machines"]]
    assert names == sorted(names)
    aliases = {machine["alias"]: machine["name"] for machine in facts["machines"] if machine["alias"]}
    assert "q35" in aliases
    resolved = resolve_machine(facts["machines"], "q35")
    assert resolved == aliases["q35"]
    assert re.fullmatch(r"pc-q35-\d+\.\d+(\.\d+)?", resolved), resolved
    assert resolved in names
    # A versioned name resolves to itself; so does an older one.
    assert resolve_machine(facts["machines"], resolved) == resolved
    assert resolve_machine(facts["machines"], "pc-q35-9.2") == "pc-q35-9.2"
    assert resolve_machine(facts["machines"], "pc").startswith("pc-i440fx-")


def test_resolve_machine_of_an_unknown_type(facts):
    with pytest.raises(ProbeError, match="'pc-q35-99.0' is not known"):
        resolve_machine(facts["machines"], "pc-q35-99.0")
    with pytest.raises(ProbeError):
        resolve_machine([], "q35")


def test_host_facts_migration_capabilities(facts):
    capabilities = facts["migration_capabilities"]
    assert {"postcopy-ram", "pause-before-switchover", "events"} <= set(capabilities)
    assert capabilities == sorted(capabilities)
    assert "downtime-limit" in facts["migration_parameters"]


def test_host_facts_cpu_models(facts):
    models = {model["name"]: model for model in facts["cpu_models"]}
    assert "qemu64" in models
    assert models["qemu64"]["runnable"] is True


def test_host_facts_leaves_no_probe_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert host_facts(conftest.qemu_program(), check_kvm=False)["version"].startswith("10.")
    assert not os.listdir(tmp_path)


def test_probe_of_a_binary_that_is_not_qemu():
    probe = Probe("false")
    with pytest.raises(ProbeError, match="did not start"):
        with probe:
            pass
    assert not os.path.exists(probe._dir)  # pylint: disable=protected-access


def boot_runner(kvm_delay: float):
    """Runs the probe's boot sector for real under TCG; a "KVM" run is that TCG run made `kvm_delay` s slower, the
    way an emulated or nested KVM is (one that boots this machine's guests at all cannot be made on demand)."""
    def run(argv: list[str], timeout: float, umask: int | None = None) -> Completed:
        kvm = "kvm" in argv
        argv = [("tcg" if arg == "kvm" else arg) for arg in argv]
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"{argv[0]} did not finish within {timeout:.0f}s") from None
        if kvm:
            if time.monotonic() - started + kvm_delay > timeout:
                raise CommandTimeout(f"{argv[0]} did not finish within {timeout:.0f}s")
            time.sleep(kvm_delay)
        return Completed(done.returncode, done.stdout, done.stderr)
    return run


@pytest.mark.parametrize(("kvm_delay", "usable"), [(0.0, True), (3.0, False)])
def test_kvm_is_used_only_when_it_boots_about_as_fast_as_tcg(monkeypatch, kvm_delay, usable):
    monkeypatch.setattr(_probe.os, "access", lambda path, mode: path == "/dev/kvm" or os.access(path, mode))
    ok, reason = _probe.kvm_can_boot(Program(conftest.QEMU, boot_runner(kvm_delay)))
    assert ok is usable, reason
    assert re.match(r"a KVM test guest booted in [\d.]+s \(TCG [\d.]+s\)" if usable else
                    r"a KVM test guest did not boot within [\d.]+s where TCG took [\d.]+s", reason), reason
