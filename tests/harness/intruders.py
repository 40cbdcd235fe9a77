"""Hostile clients of a move's listeners, from another host on the migration network (a lab namespace): without a
certificate, with a certificate of another CA, and with a certificate of the lab's own CA for a host that is not
the move's peer. Each says whether the listener let it in."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

from ansible_collections.livemig.qemu.plugins.module_utils import _tlscert
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
QEMU_NBD = shutil.which("qemu-nbd") or "/usr/bin/qemu-nbd"
KINDS = ("no certificate", "another CA", "a DN that is not the peer's")


def credentials(workdir: str, lab_ca_dir: str, impersonated: str, address: str) -> dict[str, str | None]:
    """Per kind of intruder, a client TLS directory in QEMU's layout (None: cleartext). The other CA's certificate
    claims to be `impersonated` at `address`; the lab CA's names host hv3."""
    foreign = _issue(os.path.join(workdir, "foreign-ca"), os.path.join(workdir, "foreign-ca", "host"), impersonated,
                     address)
    stranger = _issue(lab_ca_dir, os.path.join(workdir, "stranger"), "hv3", "198.18.0.103")
    return {KINDS[0]: None, KINDS[1]: _lay_out(foreign, os.path.join(workdir, "tls-foreign")),
            KINDS[2]: _lay_out(stranger, os.path.join(workdir, "tls-stranger"))}


def _issue(ca_dir: str, dest: str, name: str, address: str) -> dict:
    request = _tlscert.Request(ca_dir=ca_dir, dest=dest, common_name=name, ip_addresses=(address,),
                               dns_names=(name,), validity_days=30, renew_days=1)
    return _tlscert.ensure(request, check_mode=False)


def _lay_out(issued: dict, tls_dir: str) -> str:
    os.makedirs(tls_dir, mode=0o700)
    for name, source in (("ca-cert.pem", issued["ca_cert"]), ("client-cert.pem", issued["cert"]),
                         ("client-key.pem", issued["key"])):
        shutil.copyfile(source, os.path.join(tls_dir, name))
    return tls_dir


def _in_namespace(namespace: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def list_exports(namespace: str, tls_dir: str | None, address: str, port: int) -> subprocess.CompletedProcess:
    """qemu-nbd --list against an NBD server: what a client learns of its exports."""
    tls = [] if tls_dir is None else ["--object", f"tls-creds-x509,id=intruder,endpoint=client,dir={tls_dir}",
                                      "--tls-creds", "intruder", "--tls-hostname", address]
    return subprocess.run(_in_namespace(namespace, QEMU_NBD, "--list", "--bind", address, "--port", str(port), *tls),
                          capture_output=True, text=True, timeout=30, check=False)


def migrate_into(namespace: str, tls_dir: str | None, address: str, port: int, workdir: str) -> tuple[str, str]:
    """A QEMU that sends a migration stream to the listener; its last migration status (`failed`: refused) and
    error."""
    socket = os.path.join(workdir, f"intruder-{time.monotonic_ns()}.qmp")
    process = subprocess.Popen(_in_namespace(namespace, QEMU, "-machine", "pc", "-m", "32", "-nodefaults",
                                             "-display", "none", "-accel", "tcg", "-S",
                                             "-qmp", f"unix:{socket},server=on,wait=off"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(socket) and time.monotonic() < deadline:
            time.sleep(0.05)
        with QMPSession(socket, connect_timeout=30) as session:
            parameters = {"tls-creds": "", "tls-hostname": ""}
            if tls_dir is not None:
                session.execute("object-add", {"qom-type": "tls-creds-x509", "id": "intruder", "endpoint": "client",
                                               "dir": tls_dir, "verify-peer": True})
                parameters = {"tls-creds": "intruder", "tls-hostname": address}
            session.execute("migrate-set-parameters", parameters)
            # With a return path the sender completes only once the listener has taken the whole stream.
            session.execute("migrate-set-capabilities", {"capabilities": [{"capability": "return-path",
                                                                           "state": True}]})
            session.execute("migrate", {"uri": f"tcp:{address}:{port}"})
            while True:
                info = session.execute("query-migrate")
                if info.get("status") in ("failed", "completed", "cancelled") or time.monotonic() > deadline:
                    return info.get("status"), info.get("error-desc", "")
                time.sleep(0.1)
    finally:
        process.kill()
        process.wait(10)
