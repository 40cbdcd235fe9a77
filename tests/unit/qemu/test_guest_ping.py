"""qemu_guest_ping against a real QEMU whose guest runs no agent (the answering agent is in the integration tests,
with the Debian guest)."""
from __future__ import annotations

import conftest

SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg"}


def test_a_guest_without_an_agent_is_told_apart_from_a_vm_without_the_channel(tmp_path):
    dirs = {"name": "vm1", "run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images")}
    started = conftest.run_module("qemu_vm", tmp_path, spec={**SPEC, "guest_agent": True}, claim=True, **dirs)
    assert started["status"] == "running", started
    try:
        silent = conftest.run_module("qemu_guest_ping", tmp_path, timeout=1, **dirs)
        assert silent["changed"] is False and silent["answered"] is False, silent
        assert silent["msg"] == "the guest did not open its agent port within 1s (no agent runs in it)"
        required = conftest.run_module("qemu_guest_ping", tmp_path, timeout=1, required=True, **dirs)
        assert required["failed"] is True and required["answered"] is False and "agent port" in required["msg"]
    finally:
        conftest.run_module("qemu_vm", tmp_path, state="absent", **dirs)
    started = conftest.run_module("qemu_vm", tmp_path, spec=SPEC, claim=True, **dirs)
    try:
        none = conftest.run_module("qemu_guest_ping", tmp_path, timeout=1, **dirs)
        assert none["answered"] is False and none["msg"] == "the VM has no guest agent channel", none
    finally:
        conftest.run_module("qemu_vm", tmp_path, state="absent", **dirs)
