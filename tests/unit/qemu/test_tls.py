"""The certificates the collection issues are what QEMU accepts: qemu-nbd as a TLS server with authz-simple, and
qemu-img as its client, on 127.0.0.1.

A client with the peer's certificate reads the export; a client with no certificate, with one of another CA (also
of an impostor CA that bears the real CA's name) or with a valid one whose DN the authz does not list is refused,
and one without TLS lists no exports. The DN the authz compares is the certificate's subject in its own order.
QEMU 7.2's and 10.0's own NBD server and client, set up through QMP as a move does, accept them too.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import shutil
import socket
import subprocess
import time

import conftest
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tls_helpers import DH_PARAMS, issue, lay_out

from ansible_collections.livemig.qemu.plugins.module_utils import _tlscert
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession

EXPORT = "d0-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def qemu_option(value: str) -> str:
    """A value inside a QEMU -object option string: commas doubled."""
    return value.replace(",", ",,")


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc: no connection, so nothing in the log)."""
    with open("/proc/net/tcp", encoding="ascii") as handle:
        return any(fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A"
                   for fields in (line.split() for line in handle.readlines()[1:]))


def read_export(port: int, client_dir: str, hostname: str = "127.0.0.1") -> subprocess.CompletedProcess:
    """qemu-img info of the export on 127.0.0.1:port, as an NBD client with the x509 files of `client_dir`."""
    options = f"driver=nbd,host=127.0.0.1,port={port},export={EXPORT},tls-creds=tls0,tls-hostname={hostname}"
    return subprocess.run(["qemu-img", "info", "--image-opts", options,
                           "--object", f"tls-creds-x509,id=tls0,endpoint=client,dir={client_dir}"],
                          capture_output=True, text=True, timeout=20, check=False)


class Server:
    """qemu-nbd serving a small raw image over TLS with verify-peer and authz-simple, in the foreground."""

    def __init__(self, tmp_path, tls_dir: str, identity: str):
        self.port = free_port()
        self.log = tmp_path / f"qemu-nbd-{self.port}.log"
        image = tmp_path / "disk.raw"
        image.write_bytes(b"")
        os.truncate(image, 1 << 20)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["qemu-nbd", "--persistent", "--bind", "127.0.0.1", "--port", str(self.port), "--export-name", EXPORT,
                 "--format", "raw",
                 "--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={tls_dir},verify-peer=on",
                 "--object", f"authz-simple,id=authz0,identity={qemu_option(identity)}",
                 "--tls-creds", "tls0", "--tls-authz", "authz0", str(image)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while not listening(self.port):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "qemu-nbd does not listen"
            time.sleep(0.02)

    def said(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(tls_dir: str, identity: str) -> Server:
        started.append(Server(tmp_path, tls_dir, identity))
        return started[-1]
    yield start
    for server in started:
        server.stop()


@pytest.fixture
def hv1_hv2(tmp_path):
    """hv1's TLS directory (the server, 127.0.0.1) and hv2's (the client), from one CA."""
    return (lay_out(issue(tmp_path / "ca", "hv1"), tmp_path / "hv1"),
            lay_out(issue(tmp_path / "ca", "hv2", ips=("127.0.0.2",)), tmp_path / "hv2"))


def works(done: subprocess.CompletedProcess) -> bool:
    return done.returncode == 0 and "virtual size: 1 MiB" in done.stdout


def impostor_client(tmp_path) -> str:
    """hv2's name (the DN the authz lists) from a CA of its own key that bears the real CA's name."""
    now = datetime.datetime.now(datetime.timezone.utc)
    real = (tmp_path / "ca" / "ca-cert.pem").read_bytes()
    name = x509.load_pem_x509_certificate(real).subject
    key = ec.generate_private_key(ec.SECP256R1())
    fake = (_tlscert.builder(name, name, key, now, now + datetime.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_tlscert.key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .sign(key, hashes.SHA256()))
    host_key = ec.generate_private_key(ec.SECP256R1())
    cert = _tlscert.issue(_tlscert.Authority(fake, key, "", []), host_key,
                          x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hv2")]), ("127.0.0.2",), ("hv2",), 10,
                          now)
    directory = tmp_path / "impostor"
    directory.mkdir(mode=0o700)
    (directory / "ca-cert.pem").write_bytes(real + fake.public_bytes(serialization.Encoding.PEM))
    (directory / "client-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "client-key.pem").write_bytes(_tlscert.key_pem(host_key))
    return str(directory)


def test_the_peer_reads_the_export_and_hostile_clients_are_refused(tmp_path, serve, hv1_hv2):
    hv1, hv2 = hv1_hv2
    server = serve(hv1, "CN=hv2")
    first = read_export(server.port, hv2)
    assert works(first), first.stderr

    no_certificate = tmp_path / "no-certificate"
    no_certificate.mkdir(mode=0o700)
    shutil.copyfile(tmp_path / "ca" / "ca-cert.pem", no_certificate / "ca-cert.pem")
    other_ca = lay_out(issue(tmp_path / "other-ca", "hv2", ips=("127.0.0.2",)), tmp_path / "other-ca-hv2")
    with open(os.path.join(other_ca, "ca-cert.pem"), "a", encoding="ascii") as handle:
        handle.write((tmp_path / "ca" / "ca-cert.pem").read_text())  # it trusts the server, to get that far
    wrong_dn = lay_out(issue(tmp_path / "ca", "hv3", ips=("127.0.0.3",)), tmp_path / "hv3")
    for hostile, refusal in ((no_certificate, "Verify failed: No certificate was found"),
                             (other_ca, "Verify failed: No certificate was found"),
                             (impostor_client(tmp_path), "The certificate hasn't got a known issuer"),
                             (wrong_dn, "TLS x509 authz check for CN=hv3 is denied")):
        before = server.said().count(refusal)
        done = read_export(server.port, str(hostile))
        assert done.returncode != 0 and "virtual size" not in done.stdout, (hostile, done.stdout)
        assert server.said().count(refusal) == before + 1, (hostile, server.said())
    assert works(read_export(server.port, hv2)), "the peer still gets in after the hostile clients"


def test_a_client_without_tls_lists_no_exports(serve, hv1_hv2):
    server = serve(hv1_hv2[0], "CN=hv2")
    listed = subprocess.run(["qemu-nbd", "--list", "--bind", "127.0.0.1", "--port", str(server.port)],
                            capture_output=True, text=True, timeout=20, check=False)
    assert listed.returncode != 0 and "TLS negotiation required before option 3 (list)" in listed.stderr
    assert EXPORT not in listed.stdout + listed.stderr


def test_the_client_checks_that_the_servers_certificate_names_the_address(serve, hv1_hv2):
    server = serve(hv1_hv2[0], "CN=hv2")
    done = read_export(server.port, hv1_hv2[1], hostname="127.0.0.5")
    assert done.returncode != 0 and "Certificate does not match the hostname 127.0.0.5" in done.stderr


def test_authz_compares_the_subject_in_the_certificates_order(tmp_path, serve, hv1_hv2):
    """A subject O=Example, then CN=hv2: QEMU sees O=Example,CN=hv2 (qemu_dn), not RFC 4514's CN=hv2,O=Example."""
    now = datetime.datetime.now(datetime.timezone.utc)
    authority = _tlscert.ensure_ca(str(tmp_path / "ca"), False, now, 30)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "hv2")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _tlscert.issue(authority, key, subject, ("127.0.0.2",), (), 10, now)
    client = tmp_path / "o-cn"
    client.mkdir(mode=0o700)
    shutil.copyfile(tmp_path / "ca" / "ca-cert.pem", client / "ca-cert.pem")
    (client / "client-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (client / "client-key.pem").write_bytes(_tlscert.key_pem(key))
    assert _tlscert.qemu_dn(cert.subject) == "O=Example,CN=hv2" and subject.rfc4514_string() == "CN=hv2,O=Example"
    assert works(read_export(serve(hv1_hv2[0], _tlscert.qemu_dn(cert.subject)).port, str(client)))
    refusing = serve(hv1_hv2[0], subject.rfc4514_string())
    assert not works(read_export(refusing.port, str(client)))
    assert "TLS x509 authz check for O=Example,CN=hv2 is denied" in refusing.said()


def test_qemu_reads_the_roles_dh_parameters(tmp_path, serve, hv1_hv2):
    """The servers above load the role's dh-params.pem; a broken one in its place keeps qemu-nbd from starting."""
    assert os.path.exists(os.path.join(hv1_hv2[0], "dh-params.pem"))
    assert works(read_export(serve(hv1_hv2[0], "CN=hv2").port, hv1_hv2[1]))
    broken = lay_out(issue(tmp_path / "ca", "hv1"), tmp_path / "broken-dh")
    spoiled = pathlib.Path(DH_PARAMS).read_text(encoding="ascii").replace("MIIBCAKCAQEA", "AAAA")
    pathlib.Path(broken, "dh-params.pem").write_text(spoiled, encoding="ascii")
    with pytest.raises(AssertionError, match="Unable to load DH parameters from"):
        serve(broken, "CN=hv2")


@pytest.fixture(params=["10.0", "7.2"])
def binary(request):
    return request.getfixturevalue("qemu_72") if request.param == "7.2" else conftest.QEMU


def test_qemus_own_nbd_server_admits_only_the_peer(tmp_path, qemu, binary, hv1_hv2):
    """The target's side of a move: TLS objects by object-add (the DN as JSON, no escaping), nbd-server-start."""
    hv1, hv2 = hv1_hv2
    vm = qemu("target", "-blockdev", "driver=null-co,node-name=disk-d0,size=1048576", binary=binary)
    with QMPSession(vm.qmp, connect_timeout=5) as session:
        session.execute("object-add", {"qom-type": "tls-creds-x509", "id": "livemig-tls-server", "endpoint": "server",
                                       "dir": hv1, "verify-peer": True})
        session.execute("object-add", {"qom-type": "authz-simple", "id": "livemig-authz-peer", "identity": "CN=hv2"})
        port = free_port()
        session.execute("nbd-server-start", {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}},
                                             "tls-creds": "livemig-tls-server", "tls-authz": "livemig-authz-peer"})
        session.execute("block-export-add", {"type": "nbd", "id": "livemig-export-d0", "node-name": "disk-d0",
                                             "name": EXPORT})
        assert works(read_export(port, hv2))
        wrong_dn = lay_out(issue(tmp_path / "ca", "hv3", ips=("127.0.0.3",)), tmp_path / "hv3")
        assert not works(read_export(port, wrong_dn))


def test_qemus_own_nbd_client_gets_in_with_its_certificate(tmp_path, qemu, serve, binary, hv1_hv2):
    """The source's side of a move: a client TLS object, and an NBD node with tls-creds and tls-hostname."""
    hv1, hv2 = hv1_hv2
    server = serve(hv1, "CN=hv2")
    wrong_dn = lay_out(issue(tmp_path / "ca", "hv3", ips=("127.0.0.3",)), tmp_path / "hv3")
    vm = qemu("source", binary=binary)
    with QMPSession(vm.qmp, connect_timeout=5) as session:
        for name, directory in (("right", hv2), ("wrong", wrong_dn)):
            session.execute("object-add", {"qom-type": "tls-creds-x509", "id": f"livemig-tls-{name}",
                                           "endpoint": "client", "dir": directory, "verify-peer": True})
        node = {"driver": "nbd", "export": EXPORT, "tls-hostname": "127.0.0.1",
                "server": {"type": "inet", "host": "127.0.0.1", "port": str(server.port)}}
        # qemu-nbd serves one client at a time (--shared 1): the refused one first.
        with pytest.raises(QMPError, match="Cannot read from TLS channel"):
            session.execute("blockdev-add", {**node, "node-name": "livemig-nbd-d1", "tls-creds": "livemig-tls-wrong"})
        session.execute("blockdev-add", {**node, "node-name": "livemig-nbd-d0", "tls-creds": "livemig-tls-right"})
    assert "TLS x509 authz check for CN=hv3 is denied" in server.said()
