from __future__ import annotations

import os
import signal
import socket
import subprocess

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils import _nbdcopy
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._state import load_record, process_alive

MB = 1 << 20
VM = "vm1"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_qcow2(path, size, *writes):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)], check=True)
    for pattern, offset, length in writes:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", path],
                       check=True, capture_output=True)


def allocated_on_disk(path):
    return os.stat(path).st_blocks * 512


class Copier:
    """Runs the module the way Ansible does: its own Python process, arguments as ANSIBLE_MODULE_ARGS."""

    def __init__(self, tmp_path):
        self.dirs = {"name": VM, "run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images")}
        self.workdir = tmp_path
        self.servers = []

    def run(self, check_mode=False, receiving=True, **args):
        result = conftest.run_module("qemu_nbd_copy", self.workdir, check_mode, process_timeout=30,
                                     **{**(self.dirs if receiving else {}), **args})
        if "pid" in result:
            self.servers.append(result)
        return result

    def listen(self, label, path, **args):
        return self.run(state="listening", label=label, path=path, address="127.0.0.1", **args)

    def send(self, src, uri, **args):
        return self.run(receiving=False, state="sent", src=src, uri=uri, **args)

    def record(self):
        return load_record(VMPaths.on_host(VM, self.dirs["run_dir"], self.dirs["image_dir"]).record, VM)

    def kill_leftovers(self):
        for server in self.servers:
            if _nbdcopy.server_alive(server):
                os.kill(server["pid"], signal.SIGKILL)


@pytest.fixture
def copier(tmp_path):
    instance = Copier(tmp_path)
    yield instance
    instance.kill_leftovers()


def test_qcow2_copy_lands_identical_and_sparse(copier, tmp_path):
    src, dst = str(tmp_path / "src.qcow2"), str(tmp_path / "images" / "vm1-root.qcow2")
    make_qcow2(src, 1024 * MB, ("0x11", 0, 1 * MB), ("0x22", 300 * MB, 2 * MB), ("0x33", 1023 * MB, 1 * MB))

    listening = copier.listen("root", dst, size=1024 * MB)
    assert listening["changed"] is True
    assert listening["uri"] == f"nbd://127.0.0.1:{listening['port']}/{listening['export']}"
    assert copier.record().volatile["copy:root"]["pid"] == listening["pid"]

    sent = copier.send(src, listening["uri"])
    assert sent["changed"] is True
    assert sent["bytes_allocated"] == 4 * MB
    assert sent["virtual_size"] == 1024 * MB

    finished = copier.run(state="finished", label="root", timeout=10)
    assert finished["changed"] is True
    assert not process_alive(listening["pid"])
    assert "copy:root" not in copier.record().volatile
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", src, dst],
                             capture_output=True, text=True, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert allocated_on_disk(dst) < 64 * MB
    assert copier.run(state="finished", label="root")["changed"] is False


def test_raw_state_file_copy_is_identical_byte_for_byte(copier, tmp_path):
    src, dst = tmp_path / "saved-state", tmp_path / "images" / "vm1" / "state"  # the target's default state file
    head, tail = os.urandom(3 * MB + 123), os.urandom(777)
    with open(src, "wb") as handle:
        handle.write(head)
        handle.seek(6 * MB, os.SEEK_CUR)  # a hole in the middle, and a size that is no whole number of sectors
        handle.write(tail)
    size = src.stat().st_size

    listening = copier.listen("state", str(dst), format="raw", size=size)
    sent = copier.send(str(src), listening["uri"], src_format="raw")
    assert sent["virtual_size"] == size
    assert len(head) + len(tail) <= sent["bytes_allocated"] < len(head) + len(tail) + 2 * MB
    assert copier.run(state="finished", label="state", timeout=10)["changed"] is True
    assert dst.read_bytes() == src.read_bytes()
    assert allocated_on_disk(dst) < 5 * MB  # the 6 MiB hole stayed a hole


def test_listening_again_returns_the_live_server_unchanged(copier, tmp_path):
    dst = str(tmp_path / "images" / "vm1-root.qcow2")
    first = copier.listen("root", dst, size=8 * MB)
    again = copier.listen("root", dst, size=8 * MB)
    assert again["changed"] is False
    assert {key: again[key] for key in ("uri", "pid", "port", "export")} == \
        {key: first[key] for key in ("uri", "pid", "port", "export")}
    assert copier.listen("root", dst, size=8 * MB, check_mode=True)["changed"] is False

    other = copier.listen("root", str(tmp_path / "images" / "other.qcow2"), size=8 * MB)
    assert other.get("failed") and "already listens for" in other["msg"]


def test_absent_stops_the_server_and_deletes_the_file(copier, tmp_path):
    dst = str(tmp_path / "images" / "vm1-root.qcow2")
    listening = copier.listen("root", dst, size=8 * MB, port=free_port())
    assert copier.run(state="absent", label="root", path=dst, check_mode=True)["changed"] is True
    assert _nbdcopy.server_alive(listening) and os.path.exists(dst)

    assert copier.run(state="absent", label="root", path=dst)["changed"] is True
    assert not process_alive(listening["pid"])
    assert not os.path.exists(dst)
    assert "copy:root" not in copier.record().volatile
    assert copier.run(state="absent", label="root", path=dst)["changed"] is False


def test_check_mode_changes_nothing(copier, tmp_path):
    dst = str(tmp_path / "images" / "vm1-root.qcow2")
    result = copier.listen("root", dst, size=8 * MB, check_mode=True)
    assert result["changed"] is True and "uri" not in result
    assert not os.path.exists(dst)
    assert copier.record() is None

    src = str(tmp_path / "src.qcow2")
    make_qcow2(src, 8 * MB)
    sent = copier.send(src, f"nbd://127.0.0.1:{free_port()}/nothing", check_mode=True)
    assert sent["changed"] is True and "bytes_allocated" not in sent


def test_existing_destination_with_another_size_is_refused(copier, tmp_path):
    dst = str(tmp_path / "images" / "vm1-root.qcow2")
    os.makedirs(os.path.dirname(dst))
    make_qcow2(dst, 4 * MB)
    result = copier.listen("root", dst, size=8 * MB)
    assert result["failed"] is True
    assert dst in result["msg"] and f"virtual size {4 * MB} bytes, not {8 * MB}" in result["msg"]
    assert copier.record() is None


def test_existing_destination_with_data_is_refused(copier, tmp_path):
    dst = str(tmp_path / "images" / "vm1-root.qcow2")
    os.makedirs(os.path.dirname(dst))
    make_qcow2(dst, 8 * MB, ("0x44", 0, 64 * 1024))
    result = copier.listen("root", dst, size=8 * MB)
    assert result["failed"] is True and "holds data" in result["msg"]


def test_replace_starts_over_from_a_stale_copy(copier, tmp_path):
    """A host that kept its copy when the VM left gets a fresh image: none of the stale data survives."""
    src, dst = str(tmp_path / "src.qcow2"), str(tmp_path / "images" / "vm1-root.qcow2")
    make_qcow2(src, 8 * MB, ("0x11", 0, 1 * MB))
    os.makedirs(os.path.dirname(dst))
    make_qcow2(dst, 8 * MB, ("0x44", 4 * MB, 1 * MB))  # stale data where the source holds zeros
    listening = copier.listen("root", dst, size=8 * MB, replace=True)
    assert listening["changed"] is True
    copier.send(src, listening["uri"])
    copier.run(state="finished", label="root", timeout=10)
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", src, dst],
                             capture_output=True, text=True, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def test_an_existing_empty_destination_is_used(copier, tmp_path):
    dst = str(tmp_path / "images" / "vm1-root.qcow2")
    os.makedirs(os.path.dirname(dst))
    make_qcow2(dst, 8 * MB)
    assert copier.listen("root", dst)["changed"] is True


def test_a_missing_destination_needs_a_size(copier, tmp_path):
    result = copier.listen("root", str(tmp_path / "images" / "vm1-root.qcow2"))
    assert result["failed"] is True and "size" in result["msg"]


def test_sending_to_a_closed_port_fails_cleanly(copier, tmp_path):
    src = str(tmp_path / "src.qcow2")
    make_qcow2(src, 8 * MB, ("0x55", 0, 64 * 1024))
    uri = f"nbd://127.0.0.1:{free_port()}/nothing"
    result = copier.send(src, uri, timeout=10)
    assert result["failed"] is True
    assert uri in result["msg"] and "state=listening" in result["msg"]


def test_finished_kills_a_server_nobody_used_and_fails(copier, tmp_path):
    dst = str(tmp_path / "images" / "vm1-root.qcow2")
    listening = copier.listen("root", dst, size=8 * MB)
    result = copier.run(state="finished", label="root", timeout=0.2)
    assert result["failed"] is True and "did not exit" in result["msg"]
    assert not process_alive(listening["pid"])
    assert "copy:root" not in copier.record().volatile


def test_a_bad_label_is_refused(copier, tmp_path):
    result = copier.listen("Root-1", str(tmp_path / "x.qcow2"), size=MB)
    assert result["failed"] is True and "invalid label" in result["msg"]


def test_a_server_started_through_the_host_dict_is_found_through_the_options(copier, tmp_path):
    dirs = {"run_dir": copier.dirs["run_dir"], "image_dir": copier.dirs["image_dir"]}
    dst = str(tmp_path / "images" / "vm1-root.qcow2")
    listening = copier.run(receiving=False, state="listening", name=VM, host=dirs, label="root", path=dst,
                           size=8 * MB, address="127.0.0.1")
    assert listening["changed"] is True
    assert copier.record().volatile["copy:root"]["pid"] == listening["pid"]
    pidfile = tmp_path / "run" / VM / "copy-root.pid"
    assert int(pidfile.read_text()) == listening["pid"]

    assert copier.run(state="absent", label="root", path=dst)["changed"] is True
    assert not process_alive(listening["pid"]) and not pidfile.exists() and not os.path.exists(dst)


def test_a_block_device_disk_is_copied_into_a_device_with_old_data_and_never_deleted(copier, loop_device):
    """Source and target devices are larger than the disk; the target holds old data where the source has zeros.
    Only the disk's size crosses, every byte of it, and neither device is created, replaced or removed."""
    src, dst = loop_device(12, "src"), loop_device(16, "dst")
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x77 9M 1M", src], check=True,
                   capture_output=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xee 0 16M", dst], check=True, capture_output=True)
    listening = copier.listen("blk", dst, size=8 * MB, format="raw", replace=True)
    assert listening["changed"] is True and listening["zeroed"] is False, listening
    refused = copier.send(src, listening["uri"], src_format="raw", target_is_zero=False)
    assert refused["failed"] is True and "src_size" in refused["msg"]
    sent = copier.send(src, listening["uri"], src_format="raw", src_size=8 * MB, target_is_zero=False)
    assert sent["changed"] is True and sent["virtual_size"] == 8 * MB, sent
    assert copier.run(state="finished", label="blk")["changed"] is True
    with open(dst, "rb") as handle:
        copied = handle.read(16 * MB)
    assert copied[:MB] == b"\x5a" * MB, "the data"
    assert copied[MB:8 * MB] == bytes(7 * MB), "the source's zeros overwrote the old data"
    assert copied[8 * MB:] == b"\xee" * 8 * MB, "nothing beyond the disk's size (the source's 9M write stays home)"
    absent = copier.run(state="absent", label="blk", path=dst)
    assert "the block device" in absent["msg"] and os.path.exists(dst)


def test_a_block_device_too_small_for_the_disk_is_refused(copier, loop_device):
    device = loop_device(4)
    result = copier.listen("blk", device, size=8 * MB, format="raw")
    assert result["failed"] is True and f"{device} has 4 MiB on this host, the disk needs 8 MiB" in result["msg"]
