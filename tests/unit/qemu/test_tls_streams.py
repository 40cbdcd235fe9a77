"""Every stream of a move runs over TLS as the modules set it up, on 127.0.0.1: the migration stream (also with
multifd), QEMU's NBD server with the source's NBD client node of a disk mirror, and the stateful and cold paths'
qemu-nbd with qemu-img. The receiving end admits only the peer: a sender without TLS, with a certificate of another
CA or with one of the right CA but another subject is refused, and the receiving end still serves the peer after.

hv1 receives (its server certificate names 127.0.0.1), hv2 sends (CN=hv2); hv3 is a host of the same CA that is not
the peer.
"""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import conftest
import pytest
from tls_helpers import issue, lay_out

from ansible_collections.livemig.qemu.plugins.module_utils import _incoming, _mirror, _nbdexport, _statefile, _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration import MigrationSettings, SourceMigration
from ansible_collections.livemig.qemu.plugins.module_utils._paths import node_name
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession

MACHINE = ("-machine", "pc", "-m", "32", "-S")
DISK = node_name("d0")
NULL_DISK = ("-blockdev", f"driver=null-co,node-name={DISK},size=1048576")


@pytest.fixture
def hosts(tmp_path):
    """The TLS directories of hv1 (receives), hv2 (sends, the peer), hv3 (same CA, not the peer) and of a host of
    another CA that also trusts hv1's CA (so that it gets as far as showing its certificate)."""
    hv1 = lay_out(issue(tmp_path / "ca", "hv1"), tmp_path / "hv1")
    other = lay_out(issue(tmp_path / "other-ca", "hv2"), tmp_path / "other")
    with open(os.path.join(other, "ca-cert.pem"), "a", encoding="ascii") as handle:
        handle.write((tmp_path / "ca" / "ca-cert.pem").read_text())
    return SimpleNamespace(hv1=hv1, hv2=lay_out(issue(tmp_path / "ca", "hv2"), tmp_path / "hv2"),
                           hv3=lay_out(issue(tmp_path / "ca", "hv3"), tmp_path / "hv3"), other=other)


@pytest.fixture
def sessions():
    opened = []

    def connect(vm) -> QMPSession:
        opened.append(QMPSession(vm.qmp, connect_timeout=5).__enter__())
        return opened[-1]
    yield connect
    for session in reversed(opened):
        session.__exit__(None, None, None)


def client(tls_dir: str) -> _tlsqemu.Client:
    return _tlsqemu.client({"tls_dir": tls_dir, "tls_hostname": "127.0.0.1"})


def wait_migration(session: QMPSession, wanted: tuple[str, ...], timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while (status := session.execute("query-migrate").get("status")) not in wanted:
        assert time.monotonic() < deadline, f"migration still {status}"
        time.sleep(0.05)
    return status


def listen(vm, session: QMPSession, hosts, capabilities=(), parameters=None) -> str:
    task = SimpleNamespace(paths=vm.paths, check_mode=False, params={
        "capabilities": list(capabilities), "parameters": parameters or {}, "address": "127.0.0.1", "port": 0,
        "tls_dir": hosts.hv1, "tls_peer_dn": "CN=hv2"})
    return _incoming.listen(task, session)["uri"]


def hostile_migrate(source: QMPSession, uri: str, tls: _tlsqemu.Client | None) -> str:
    if tls:
        _tlsqemu.add_client(source, tls)
    source.execute("migrate-set-parameters", _tlsqemu.outgoing_parameters(tls))
    source.execute("migrate", {"uri": uri})
    return wait_migration(source, ("failed", "completed"))


@pytest.mark.parametrize("capabilities,parameters", [((), {}), (("multifd",), {"multifd-channels": 2})],
                         ids=["single stream", "multifd"])
def test_a_migration_runs_over_tls_and_admits_only_the_peer(qemu, sessions, hosts, tmp_path, capabilities,
                                                            parameters):
    target = qemu("target", *MACHINE, "-incoming", "defer")
    tgt = sessions(target)
    uri = listen(target, tgt, hosts, capabilities, parameters)
    assert tgt.execute("query-migrate-parameters")["tls-creds"] == _tlsqemu.SERVER_CREDS

    for name, tls in (("cleartext", None), ("other-ca", client(hosts.other)), ("not-the-peer", client(hosts.hv3))):
        intruder = sessions(qemu(f"intruder-{name}", *MACHINE))
        assert hostile_migrate(intruder, uri, tls) == "failed", name
        assert tgt.execute("query-status")["status"] == "inmigrate", name

    src = sessions(qemu("source", *MACHINE))
    tls = client(hosts.hv2)
    _tlsqemu.add_client(src, tls)
    statistics = SourceMigration(src, MigrationSettings(uri=uri, capabilities=list(capabilities),
                                                        parameters=parameters, tls=tls, sample_interval=0.2)).run()
    assert statistics["status"] == "completed"
    assert wait_migration(tgt, ("completed",)) == "completed"
    assert src.execute("query-migrate-parameters")["tls-creds"] == _tlsqemu.CLIENT_CREDS

    # The VM that arrived over TLS saves its state to a file: QEMU refuses TLS there, so it is cleared first.
    saved = _statefile.save_state(tgt, str(tmp_path / "state"), timeout=30)
    assert saved["size"] > 0 and tgt.execute("query-migrate-parameters")["tls-creds"] == ""


def test_a_cleartext_migration_clears_the_tls_an_earlier_move_left(qemu, sessions):
    target = qemu("target", *MACHINE, "-incoming", "defer")
    tgt = sessions(target)
    task = SimpleNamespace(paths=target.paths, check_mode=False, params={
        "capabilities": [], "parameters": {}, "address": "127.0.0.1", "port": 0})
    uri = _incoming.listen(task, tgt)["uri"]
    src = sessions(qemu("source", *MACHINE))
    src.execute("migrate-set-parameters", {"tls-creds": _tlsqemu.SERVER_CREDS, "tls-authz": _tlsqemu.PEER_AUTHZ})
    SourceMigration(src, MigrationSettings(uri=uri, sample_interval=0.2)).run()
    assert {key: value for key, value in src.execute("query-migrate-parameters").items()
            if key.startswith("tls-")} == _tlsqemu.CLEARTEXT


def test_the_nbd_server_admits_only_the_peers_mirror(qemu, sessions, hosts):
    tgt = sessions(qemu("target", *NULL_DISK))
    tls = _tlsqemu.server({"tls_dir": hosts.hv1, "tls_peer_dn": "CN=hv2"})
    port = _nbdexport.start_server(tgt, "127.0.0.1", 0, 4, tls)
    tgt.execute("block-export-add", {"type": "nbd", "id": "livemig-export-d0", "node-name": DISK, "name": "d0-x",
                                     "writable": True})
    src = sessions(qemu("source", *NULL_DISK))
    node = {"driver": "nbd", "export": "d0-x", "server": {"type": "inet", "host": "127.0.0.1", "port": str(port)}}
    with pytest.raises(QMPError):
        src.execute("blockdev-add", {**node, "node-name": "cleartext"}, timeout=10)
    for name, directory in (("other-ca", hosts.other), ("not-the-peer", hosts.hv3)):
        src.execute("object-add", {"qom-type": "tls-creds-x509", "id": name, "endpoint": "client", "dir": directory})
        with pytest.raises(QMPError):
            src.execute("blockdev-add", {**node, "node-name": name, "tls-creds": name, "tls-hostname": "127.0.0.1"},
                        timeout=10)

    _mirror.start_mirror(src, DISK, "127.0.0.1", port, "d0-x", tls=client(hosts.hv2))
    assert _mirror.wait_ready(src, DISK, time.monotonic() + 20)["ready"]
    assert _mirror.abort(src, DISK)


def receive(tmp_path, hosts, label: str, peer_dn: str = "CN=hv2") -> dict:
    return conftest.run_module("qemu_nbd_copy", tmp_path, name="vm1", run_dir=str(tmp_path / "run"), label=label,
                               path=str(tmp_path / f"{label}.raw"), format="raw", size=1 << 20, address="127.0.0.1",
                               state="listening", tls_dir=hosts.hv1, tls_peer_dn=peer_dn)


def send(tmp_path, uri: str, tls_dir: str | None) -> dict:
    source = tmp_path / "source.raw"
    if not source.exists():
        source.write_bytes(os.urandom(4096) + bytes((1 << 20) - 4096))
    tls = {"tls_dir": tls_dir, "tls_hostname": "127.0.0.1"} if tls_dir else {}
    return conftest.run_module("qemu_nbd_copy", tmp_path, src=str(source), src_format="raw", uri=uri, timeout=20,
                               state="sent", **tls)


@pytest.fixture
def receivers(tmp_path):
    """The labels of the receivers a test starts; any still listening at its end is removed."""
    labels: list[str] = []
    yield labels
    for label in labels:
        removed = conftest.run_module("qemu_nbd_copy", tmp_path, name="vm1", run_dir=str(tmp_path / "run"),
                                      label=label, path=str(tmp_path / f"{label}.raw"), state="absent")
        assert not removed.get("failed"), removed


def test_the_copy_receiver_admits_only_the_peers_sender_and_outlives_the_others(tmp_path, hosts, receivers):
    receivers.append("disk")
    receiver = receive(tmp_path, hosts, "disk")
    for kind, tls_dir in (("cleartext", None), ("another CA", hosts.other), ("another DN", hosts.hv3)):
        refused = send(tmp_path, receiver["uri"], tls_dir)
        assert refused.get("failed"), (kind, refused)
        assert (tmp_path / "disk.raw").read_bytes() == bytes(1 << 20), kind
    sent = send(tmp_path, receiver["uri"], hosts.hv2)
    assert not sent.get("failed"), sent
    finished = conftest.run_module("qemu_nbd_copy", tmp_path, name="vm1", run_dir=str(tmp_path / "run"),
                                   label="disk", state="finished", timeout=20)
    assert not finished.get("failed"), finished
    assert (tmp_path / "disk.raw").read_bytes() == (tmp_path / "source.raw").read_bytes()


def test_a_dn_with_a_comma_reaches_qemu_nbd_whole(tmp_path, hosts, receivers):
    """QEMU's option syntax splits at commas: the DN's are doubled, so the authz admits exactly that subject."""
    receivers.append("comma")
    receiver = receive(tmp_path, hosts, "comma", peer_dn="CN=hv2,O=x")
    assert send(tmp_path, receiver["uri"], hosts.hv2).get("failed"), "CN=hv2 is not CN=hv2,O=x"


@pytest.mark.parametrize("params,message", [
    ({"tls_dir": "/nonexistent/tls", "tls_peer_dn": "CN=hv2"}, "the TLS directory /nonexistent/tls does not exist"),
    ({"tls_dir": "relative", "tls_peer_dn": "CN=hv2"}, "must be an absolute path"),
    ({"tls_dir": "/etc"}, "needs tls_peer_dn"),
    ({"tls_peer_dn": "CN=hv2"}, "tls_peer_dn needs tls_dir"),
])
def test_bad_server_options_are_refused(params, message):
    with pytest.raises(LivemigError, match=message):
        _tlsqemu.server(params)


def test_bad_client_options_are_refused(tmp_path, hosts):
    with pytest.raises(LivemigError, match="lacks ca-cert.pem, client-cert.pem, client-key.pem.*livemig.qemu.certificates"):
        _tlsqemu.client({"tls_dir": str(tmp_path)})
    with pytest.raises(LivemigError, match="neither an IP address nor a DNS name"):
        _tlsqemu.client({"tls_dir": hosts.hv2, "tls_hostname": "a b"})
    assert _tlsqemu.client({"tls_dir": hosts.hv2, "tls_hostname": "[::1]"}).hostname == "::1"
    assert _tlsqemu.client({}) is None
