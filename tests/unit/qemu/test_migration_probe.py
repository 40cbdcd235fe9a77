"""qemu_migration_probe on 127.0.0.1: the one-shot listener (run as Ansible runs the module) and the sender measure
the link, refuse hostile clients (another token; with TLS no certificate, another CA, another subject) and still
measure the real sender; the listener ends by its deadline; state=measured reads a real QEMU running the dirtying
boot-sector guest with a qcow2 data disk.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import conftest
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_migration import MB, boot_disk_args, boot_sector, wait_dirtying
from tls_helpers import issue, lay_out

from ansible_collections.livemig.qemu.plugins.module_utils import _streamcache, _tlscert, _tlsqemu, _vmmeasure
from ansible_collections.livemig.qemu.plugins.module_utils._linktest import LinkTestError, measure_link
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import process_alive
from ansible_collections.livemig.qemu.plugins.module_utils._vmhost import wait_exit

LOOPBACK = "127.0.0.1"
WRONG_TOKEN = "0" * 64
RAM_MB = 64
WORKING_SET = 32 * MB
DATA_WRITTEN = 4 * MB


def listen(tmp_path, timeout: float = 20, **tls) -> dict:
    started = conftest.run_module("qemu_migration_probe", tmp_path, state="listening", address=LOOPBACK,
                                  timeout=timeout, **tls)
    assert started["changed"] is True and started["port"] > 0 and process_alive(started["pid"]), started
    assert len(started["token"]) == 64 and "failed" not in started
    return started


def closed_at_once(port: int, first_bytes: bytes) -> bool:
    """A client that sends `first_bytes` and waits: the listener closes the connection (EOF) well before its
    deadline."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as client:
        client.sendall(first_bytes)
        try:
            return client.recv(1) == b""
        except ConnectionResetError:
            return True


@pytest.fixture
def cleanup():
    """Listener pids a test started: killed if a failing test left them running."""
    pids = []
    yield pids
    for pid in pids:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- the link ------------------------------------------------------------------------------------------------------

def test_the_sender_measures_the_loopback_link_and_the_listener_then_exits(tmp_path, cleanup):
    listener = listen(tmp_path)
    cleanup.append(listener["pid"])
    measured = measure_link(LOOPBACK, listener["port"], listener["token"], 0.5, None)
    assert measured["link_rate"] > 0 and measured["link_refused"] == 0, measured
    assert measured["link_bytes"] == measured["link_sender_bytes"] > 0
    assert measured["link_rate"] == pytest.approx(measured["link_bytes"] / measured["link_seconds"], rel=1e-3)
    assert 0.4 < measured["link_sender_seconds"] < 5
    assert wait_exit(listener["pid"], 5), "the one-shot listener still runs after its sender"


def test_a_wrong_token_is_refused_at_once_and_the_real_sender_still_measured(tmp_path, cleanup):
    listener = listen(tmp_path)
    cleanup.append(listener["pid"])
    started = time.monotonic()
    assert closed_at_once(listener["port"], WRONG_TOKEN.encode())
    assert time.monotonic() - started < 2
    with pytest.raises(LinkTestError, match="refused this sender"):
        measure_link(LOOPBACK, listener["port"], "f" * 64, 0.2, None)
    measured = measure_link(LOOPBACK, listener["port"], listener["token"], 0.2, None)
    assert measured["link_rate"] > 0 and measured["link_refused"] == 2, measured


def test_the_listener_binds_only_its_address_and_exits_by_its_deadline(tmp_path, cleanup):
    listener = listen(tmp_path, timeout=1)
    cleanup.append(listener["pid"])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", listener["port"]), timeout=2).close()
    assert wait_exit(listener["pid"], 4), "the listener outlived its timeout"
    with pytest.raises(LinkTestError, match="cannot connect"):
        measure_link(LOOPBACK, listener["port"], listener["token"], 0.2, None)


PLAYBOOK = """
- name: Start a listener as a play does
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Listen
      livemig.qemu.qemu_migration_probe:
        state: listening
        address: 127.0.0.1
        timeout: 30
      register: listener
    - name: Keep the result
      ansible.builtin.copy:
        content: "{{ listener | to_json }}"
        dest: RESULT
        mode: "0600"
"""


def test_ansible_does_not_wait_for_the_listener_which_outlives_the_task(tmp_path, cleanup):
    """Through AnsiballZ: the task returns at once, its temporary directory is removed, and the listener serves."""
    result, playbook = tmp_path / "listener.json", tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.replace("RESULT", str(result)), encoding="utf-8")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": conftest.COLLECTIONS, "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local-tmp"), "ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote-tmp")}
    env.pop("ANSIBLE_CONFIG", None)
    started = time.monotonic()
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
                           "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 25, "ansible-playbook waited for the listener"
    listener = json.loads(result.read_text(encoding="utf-8"))
    cleanup.append(listener["pid"])
    assert not os.listdir(tmp_path / "remote-tmp")
    assert measure_link(LOOPBACK, listener["port"], listener["token"], 0.2, None)["link_rate"] > 0


def test_check_mode_starts_no_listener_and_bad_input_fails(tmp_path):
    checked = conftest.run_module("qemu_migration_probe", tmp_path, check_mode=True, state="listening",
                                  address=LOOPBACK)
    assert checked["changed"] is True and checked["port"] == 0 and checked["pid"] is None, checked
    wildcard = conftest.run_module("qemu_migration_probe", tmp_path, state="listening", address="0.0.0.0")
    assert wildcard["failed"] is True and "migration address" in wildcard["msg"], wildcard
    foreign = conftest.run_module("qemu_migration_probe", tmp_path, state="listening", address="192.0.2.1")
    assert foreign["failed"] is True and "cannot listen on 192.0.2.1:0" in foreign["msg"], foreign
    no_dn = conftest.run_module("qemu_migration_probe", tmp_path, state="listening", address=LOOPBACK,
                                tls_dir=str(tmp_path))
    assert no_dn["failed"] is True and "tls_peer_dn" in no_dn["msg"], no_dn


# -- TLS -----------------------------------------------------------------------------------------------------------

@pytest.fixture
def tls(tmp_path):
    """hv1 listens (its server certificate names 127.0.0.1), hv2 sends (CN=hv2), hv3 is of the same CA but not the
    peer, `other` has a certificate CN=hv2 of another CA and trusts hv1's CA."""
    hv1 = lay_out(issue(tmp_path / "ca", "hv1"), tmp_path / "hv1")
    other = lay_out(issue(tmp_path / "other-ca", "hv2"), tmp_path / "other")
    with open(f"{other}/ca-cert.pem", "a", encoding="ascii") as handle:
        handle.write((tmp_path / "ca" / "ca-cert.pem").read_text())
    return {"hv1": hv1, "hv2": lay_out(issue(tmp_path / "ca", "hv2"), tmp_path / "hv2"),
            "hv3": lay_out(issue(tmp_path / "ca", "hv3"), tmp_path / "hv3"), "other": other}


def client(tls_dir: str, hostname: str | None = None) -> _tlsqemu.Client:
    return _tlsqemu.Client(tls_dir, hostname)


def test_over_tls_only_the_peer_is_measured(tmp_path, tls, cleanup):
    listener = listen(tmp_path, tls_dir=tls["hv1"], tls_peer_dn="CN=hv2")
    cleanup.append(listener["pid"])
    port, token = listener["port"], listener["token"]
    assert closed_at_once(port, token.encode()), "a cleartext client got an answer from a TLS listener"
    for hostile in (client(tls["other"]), client(tls["hv3"])):
        with pytest.raises(LinkTestError):
            measure_link(LOOPBACK, port, token, 0.2, hostile)
    with pytest.raises(LinkTestError, match="certificate verify failed"):
        measure_link(LOOPBACK, port, token, 0.2, client(tls["hv2"], "hv9"))
    measured = measure_link(LOOPBACK, port, token, 0.3, client(tls["hv2"], "hv1"))
    assert measured["link_rate"] > 0 and measured["link_refused"] == 4, measured
    assert wait_exit(listener["pid"], 5)


def test_the_admitted_subject_is_compared_in_the_certificates_order(tmp_path, tls, cleanup):
    """A subject O=Example, then CN=hv2 is admitted as O=Example,CN=hv2 (QEMU's form), not as RFC 4514's
    CN=hv2,O=Example."""
    now = datetime.datetime.now(datetime.timezone.utc)
    authority = _tlscert.ensure_ca(str(tmp_path / "ca"), False, now, 30)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _tlscert.issue(authority, key, x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                                                     x509.NameAttribute(NameOID.COMMON_NAME, "hv2")]),
                          (LOOPBACK,), (), 10, now)
    sender = tmp_path / "o-cn"
    sender.mkdir(mode=0o700)
    shutil.copyfile(tmp_path / "ca" / "ca-cert.pem", sender / "ca-cert.pem")
    (sender / "client-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (sender / "client-key.pem").write_bytes(_tlscert.key_pem(key))
    refusing = listen(tmp_path, tls_dir=tls["hv1"], tls_peer_dn="CN=hv2,O=Example")
    cleanup.append(refusing["pid"])
    with pytest.raises(LinkTestError):
        measure_link(LOOPBACK, refusing["port"], refusing["token"], 0.2, client(str(sender)))
    admitting = listen(tmp_path, tls_dir=tls["hv1"], tls_peer_dn="O=Example,CN=hv2")
    cleanup.append(admitting["pid"])
    assert measure_link(LOOPBACK, admitting["port"], admitting["token"], 0.2, client(str(sender)))["link_rate"] > 0


# -- the VM --------------------------------------------------------------------------------------------------------

@pytest.fixture
def vm(tmp_path):
    """VM vm1 under TCG booted from a raw disk `boot` holding the dirtying boot sector (WORKING_SET), with a qcow2
    disk `data` of which DATA_WRITTEN bytes hold data."""
    dirs = {"name": "vm1", "run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images")}
    paths = VMPaths.on_host("vm1", dirs["run_dir"], dirs["image_dir"])
    (tmp_path / "images").mkdir(mode=0o700)
    with open(paths.image_dir + "/vm1-boot.raw", "wb") as handle:
        handle.write(boot_sector(WORKING_SET).ljust(MB, b"\0"))
    data = paths.image_dir + "/vm1-data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", data, "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {DATA_WRITTEN}", data], check=True,
                   capture_output=True)
    spec = {"memory_mb": RAM_MB, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg",
            "disks": [{"name": "boot", "size_mb": 1, "format": "raw"}, {"name": "data", "size_mb": 64}]}
    started = conftest.run_module("qemu_vm", tmp_path, spec=spec, claim=True, **dirs)
    assert started["status"] == "running", started
    try:
        with QMPSession(paths.qmp, connect_timeout=5) as session:
            wait_dirtying(session)
        yield dirs
    finally:
        conftest.run_module("qemu_vm", tmp_path, state="absent", **dirs)


def test_measured_reads_the_running_vm_and_the_link(tmp_path, vm, cleanup):
    listener = listen(tmp_path)
    cleanup.append(listener["pid"])
    probe = conftest.run_module("qemu_migration_probe", tmp_path, state="measured", disks=["data"],
                                peer_address=LOOPBACK, peer_port=listener["port"], token=listener["token"],
                                link_seconds=0.3, **vm)
    assert probe["changed"] is False and probe["status"] == "running", probe
    found = probe["measurements"]
    assert found["dirty_rate"] > 0 and found["dirty_rate_mode"] == "page-sampling", found
    assert found["dirty_rate"] % MB == 0 and found["dirty_rate_error"] is None
    assert found["ram_bytes"] == RAM_MB * MB
    assert WORKING_SET <= found["ram_resident_bytes"] <= found["ram_bytes"], found
    assert found["disk_bytes_per_disk"]["data"] >= DATA_WRITTEN and found["disk_bytes"] < 64 * MB, found
    assert found["disk_write_rate"] == 0  # the guest never writes its disks
    assert found["link_rate"] > 0 and found["link_error"] is None, found
    assert probe["msg"].startswith("VM vm1: dirties ") and "page-sampling" in probe["msg"]


def test_measured_in_check_mode_without_a_listener_reports_why_the_link_is_unmeasured(tmp_path, vm):
    probe = conftest.run_module("qemu_migration_probe", tmp_path, check_mode=True, state="measured",
                                disks=["boot", "data"], dirty_rate_seconds=0.3, **vm)
    found = probe["measurements"]
    assert probe["changed"] is False and found["dirty_rate"] > 0 and found["dirty_rate_seconds"] == 0.3, probe
    assert found["link_rate"] is None and "no listener" in found["link_error"]
    assert found["disk_bytes"] == found["disk_bytes_per_disk"]["boot"] + found["disk_bytes_per_disk"]["data"]
    closed = conftest.run_module("qemu_migration_probe", tmp_path, state="measured", peer_address=LOOPBACK,
                                 peer_port=free_port(), token=WRONG_TOKEN, dirty_rate_seconds=0.1, **vm)
    assert closed["measurements"]["link_rate"] is None, closed
    assert closed["measurements"]["link_error"].startswith(f"cannot connect to the listener at {LOOPBACK}:")
    unknown = conftest.run_module("qemu_migration_probe", tmp_path, state="measured", disks=["root"], **vm)
    assert unknown["failed"] is True and "no disk root" in unknown["msg"], unknown


def test_measured_returns_the_recorded_stream_ceiling_of_the_same_stream_only(tmp_path, vm):
    """The source recorded its last moves to 127.0.0.1 under the keys qemu_migrate gives them (_streamcache): the
    probe, given the capabilities and parameters the source migrates with, returns the host-bound ceiling of that
    stream, and no ceiling for another transport, multifd setting or target."""
    now = time.time()
    tcp = _streamcache.migration_key(f"tcp:{LOOPBACK}:4444", False, [], {})
    _streamcache.record(vm["run_dir"], tcp, 360e6, 1.2e9, "vm1-tcp", now)
    multifd = _streamcache.migration_key(f"tcp:{LOOPBACK}:4444", False, ["multifd"], {})
    _streamcache.record(vm["run_dir"], multifd, 117e6, 120e6, "vm1-multifd", now)

    def probe(peer_address=LOOPBACK, **options):
        result = conftest.run_module("qemu_migration_probe", tmp_path, state="measured", peer_address=peer_address,
                                     dirty_rate_seconds=0.1, **vm, **options)
        assert "failed" not in result, result
        return result

    probed = probe(capabilities=["xbzrle"], parameters={"multifd-channels": 4})
    found = probed["measurements"]
    assert found["stream_rate"] == 360e6, found
    assert found["stream_rate_source"] == {"migration_id": "vm1-tcp", "when": now, "bound": "host",
                                           "link_rate": 1200000000, "cap": 0}
    assert probed["msg"].endswith("QEMU's stream last reached 343.3 MiB/s to this target"), probed["msg"]
    # multifd without multifd-channels: QEMU's 2 channels, the key qemu_migrate recorded
    for same in ({}, {"multifd-channels": 2}, {"multifd-channels": "2", "multifd-compression": "none"}):
        link_bound = probe(capabilities=["multifd"], parameters=same)["measurements"]
        assert link_bound["stream_rate"] is None and link_bound["stream_rate_source"]["bound"] == "link", same
        assert link_bound["stream_rate_source"]["migration_id"] == "vm1-multifd", link_bound
    for other in ({"transport": "tls"}, {"peer_address": "127.0.0.2"},
                  {"capabilities": ["multifd"], "parameters": {"multifd-channels": 4}},
                  {"capabilities": ["multifd"], "parameters": {"multifd-compression": "zstd"}}):
        unrecorded = probe(**other)["measurements"]
        assert unrecorded["stream_rate"] is None and unrecorded["stream_rate_source"] is None, (other, unrecorded)
    refused = conftest.run_module("qemu_migration_probe", tmp_path, state="measured", peer_address=LOOPBACK,
                                  capabilities=["multifd"], parameters={"multifd-channels": [4]}, **vm)
    assert refused["failed"] is True, refused
    assert refused["msg"] == "parameters multifd-channels must be a whole number of at least 1, got [4]", refused


def test_measured_leaves_out_the_uefi_variable_store(tmp_path):
    """The role passes the plan's local disks as they are, UEFI's variable store among them: a pflash that no
    device's block statistics count, measured as if it were not given."""
    dirs = {"name": "vm1", "run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images")}
    spec = {"memory_mb": RAM_MB, "vcpus": 1, "machine": "q35", "cpu_model": "qemu64", "accel": "tcg",
            "firmware": "uefi", "disks": [{"name": "data", "size_mb": 8}]}
    started = conftest.run_module("qemu_vm", tmp_path, spec=spec, claim=True, **dirs)
    assert started["status"] == "running", started
    try:
        probe = conftest.run_module("qemu_migration_probe", tmp_path, state="measured", disks=["data", "nvram"],
                                    dirty_rate_seconds=0.1, **dirs)
    finally:
        conftest.run_module("qemu_vm", tmp_path, state="absent", **dirs)
    assert "failed" not in probe, probe
    assert list(probe["measurements"]["disk_bytes_per_disk"]) == ["data"], probe["measurements"]


def test_qemu_72_measures_whole_seconds(tmp_path, qemu, qemu_72):
    """QEMU 7.2 has no calc-time-unit: a window under a second is measured over one second."""
    old = qemu("vm72", "-m", f"{RAM_MB}M", *boot_disk_args(tmp_path / "boot72.raw", WORKING_SET), binary=qemu_72)
    with QMPSession(old.qmp, connect_timeout=5) as session:
        wait_dirtying(session)
        dirty = _vmmeasure.dirty_rate(session, 0.3, RAM_MB * MB)
    assert dirty["dirty_rate"] > 0 and dirty["dirty_rate_seconds"] == 1.0, dirty


def test_measured_fails_for_a_vm_that_does_not_run(tmp_path):
    probe = conftest.run_module("qemu_migration_probe", tmp_path, state="measured", name="vm1",
                                run_dir=str(tmp_path / "run"))
    assert probe["failed"] is True and "does not run on this host" in probe["msg"], probe


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]
