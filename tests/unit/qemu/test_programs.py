"""Modules find their programs with get_bin_path and run them with run_command: a missing program is a clear
failure naming what to install, and a hung one is killed at its deadline."""
from __future__ import annotations

import os
import subprocess
import time

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._state import process_alive

MB = 1 << 20
NO_QEMU = ("qemu-system-x86_64 not found on this host: install the Debian package qemu-system-x86 or set qemu_binary "
           "to its path")
NO_QEMU_IMG = "qemu-img not found on this host: install the Debian package qemu-utils"
NO_QEMU_NBD = "qemu-nbd not found on this host: install the Debian package qemu-utils"
SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg",
        "disks": [{"name": "root", "size_mb": 8, "format": "qcow2"}]}


def only(tmp_path, *programs: str) -> dict[str, str]:
    """An environment whose PATH holds only these programs."""
    return {"PATH": conftest.path_with(tmp_path / "bin", *programs)}


def make_qcow2(path: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(8 * MB)], check=True)


def test_facts_without_qemu(tmp_path):
    result = conftest.run_module("qemu_facts", tmp_path, env=only(tmp_path))
    assert result["failed"] is True and result["msg"] == NO_QEMU


def test_facts_with_a_qemu_binary_that_is_not_there(tmp_path):
    result = conftest.run_module("qemu_facts", tmp_path, qemu_binary=str(tmp_path / "qemu"))
    assert result["failed"] is True
    assert result["msg"] == f"{tmp_path / 'qemu'} not found on this host: install QEMU or set qemu_binary to its path"


def test_facts_without_the_probe_need_no_qemu(tmp_path):
    result = conftest.run_module("qemu_facts", tmp_path, env=only(tmp_path), probe=False,
                                 run_dir=str(tmp_path / "run"))
    assert "failed" not in result, result
    assert result["ansible_facts"]["livemig_qemu"]["vms"] == {}


def test_vm_without_qemu_starts_nothing(tmp_path):
    result = conftest.run_module("qemu_vm", tmp_path, env=only(tmp_path), name="vm1", run_dir=str(tmp_path / "run"),
                                 image_dir=str(tmp_path / "images"), spec=SPEC, claim=True)
    assert result["failed"] is True and result["msg"] == NO_QEMU
    assert not (tmp_path / "images").exists()


def test_vm_without_qemu_img_creates_no_disk(tmp_path):
    result = conftest.run_module("qemu_vm", tmp_path, env=only(tmp_path, "qemu-system-x86_64"), name="vm1",
                                 run_dir=str(tmp_path / "run"), image_dir=str(tmp_path / "images"), spec=SPEC,
                                 claim=True)
    assert result["failed"] is True and result["msg"] == NO_QEMU_IMG
    assert not (tmp_path / "images" / "vm1-root.qcow2").exists()
    assert not (tmp_path / "run" / "vm1" / "pid").exists()


def test_storage_check_without_qemu_img_writes_no_token(tmp_path):
    make_qcow2(str(tmp_path / "vm1-root.qcow2"))
    result = conftest.run_module("qemu_storage_check", tmp_path, env=only(tmp_path), name="vm1",
                                 run_dir=str(tmp_path), spec=SPEC, state="marked")
    assert result["failed"] is True and result["msg"] == NO_QEMU_IMG
    assert not (tmp_path / ".vm1-root.qcow2.livemig-token").exists()


def test_sending_without_qemu_img(tmp_path):
    make_qcow2(str(tmp_path / "src.qcow2"))
    result = conftest.run_module("qemu_nbd_copy", tmp_path, env=only(tmp_path), state="sent",
                                 src=str(tmp_path / "src.qcow2"), uri="nbd://127.0.0.1:1/x")
    assert result["failed"] is True and result["msg"] == NO_QEMU_IMG


def test_listening_without_qemu_nbd_creates_no_image(tmp_path):
    destination = tmp_path / "images" / "vm1-root.qcow2"
    result = conftest.run_module("qemu_nbd_copy", tmp_path, env=only(tmp_path, "qemu-img"), state="listening",
                                 name="vm1", run_dir=str(tmp_path / "run"), label="root", path=str(destination),
                                 size=8 * MB, address="127.0.0.1")
    assert result["failed"] is True and result["msg"] == NO_QEMU_NBD
    assert not destination.exists()


@pytest.fixture
def hanging_qemu_img(tmp_path):
    """A qemu-img that records its pid and never finishes."""
    directory, pidfile = tmp_path / "hang", tmp_path / "hang.pid"
    directory.mkdir()
    script = directory / "qemu-img"
    script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec /bin/sleep 60\n", encoding="ascii")
    script.chmod(0o755)
    yield {"PATH": str(directory)}, pidfile
    if pidfile.exists() and process_alive(int(pidfile.read_text())):
        os.kill(int(pidfile.read_text()), 9)


def test_a_hung_program_is_killed_at_its_deadline(tmp_path, hanging_qemu_img):
    env, pidfile = hanging_qemu_img
    make_qcow2(str(tmp_path / "src.qcow2"))
    started = time.monotonic()
    result = conftest.run_module("qemu_nbd_copy", tmp_path, env=env, process_timeout=20, state="sent",
                                 src=str(tmp_path / "src.qcow2"), uri="nbd://127.0.0.1:1/x", timeout=1)
    assert result["failed"] is True and result["msg"] == "sent: qemu-img map did not finish within 1s"
    assert time.monotonic() - started < 10
    assert not process_alive(int(pidfile.read_text()))
