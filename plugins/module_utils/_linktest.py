# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How much the migration network carries between two hosts, measured before a move: a one-shot listener on the
target, a timed sender on the source, over TCP or TLS (the TLS a move would use, so the rate is what it can carry).

Private to the livemig.qemu collection. The qemu_migration_probe module's state=listening is `listening`; its
state=measured calls `measure_link`.

The exchange: the sender sends the listener's token (64 hexadecimal digits) first, then frames (a 4-byte big-endian
length and that many random bytes) for its time, then an empty frame; the listener answers one JSON line (bytes,
seconds, refused) and exits. The empty frame ends the stream instead of a half-close, which a TLS stream cannot do
and still carry the answer. The migration network is not trusted: a connection that does not present the token (or,
with TLS, a certificate of the CA with the admitted subject) within PRESENT_TIMEOUT is closed and counted.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import host_port
from ansible_collections.livemig.qemu.plugins.module_utils._tlsfiles import (
    CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY)

CHUNK = 1 << 20
HEADER = 4
TOKEN = re.compile(r"^[0-9a-f]{64}$")
PRESENT_TIMEOUT = 5.0  # seconds a connection has for its TLS handshake and its token
CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 10.0  # seconds any one send or receive of the sender may block
MAX_REPLY = 4096
MAX_LISTEN_SECONDS = 3600
# The subject attributes as OpenSSL (Python's getpeercert) and GnuTLS (QEMU's tls-authz, hence tls_peer_dn) name them.
GNUTLS_NAMES = {
    "commonName": "CN", "surname": "surName", "serialNumber": "serialNumber", "countryName": "C",
    "localityName": "L", "stateOrProvinceName": "ST", "streetAddress": "street", "organizationName": "O",
    "organizationalUnitName": "OU", "title": "title", "businessCategory": "businessCategory",
    "postalCode": "postalCode", "givenName": "givenName", "initials": "initials",
    "generationQualifier": "generationQualifier", "dnQualifier": "dnQualifier", "pseudonym": "pseudonym",
    "userId": "UID", "domainComponent": "DC", "emailAddress": "EMAIL",
}


class LinkTestError(LivemigError):
    """The link test could not run or was refused; the message says why."""


# -- TLS ----------------------------------------------------------------------------------------------------------

def server_context(tls: _tlsqemu.Server) -> ssl.SSLContext:
    """The listener's end: its server certificate, and a client certificate of the CA required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    _load(context, tls.dir, SERVER_CERT, SERVER_KEY)
    return context


def client_context(tls: _tlsqemu.Client) -> ssl.SSLContext:
    """The sender's end: its client certificate, and the listener's verified against the CA and the host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, tls.dir, CLIENT_CERT, CLIENT_KEY)
    return context


def _load(context: ssl.SSLContext, tls_dir: str, cert: str, key: str) -> None:
    try:
        context.load_verify_locations(cafile=os.path.join(tls_dir, CA_CERT))
        context.load_cert_chain(os.path.join(tls_dir, cert), os.path.join(tls_dir, key))
    except (OSError, ssl.SSLError) as exc:
        raise LinkTestError(f"cannot load {CA_CERT}, {cert} and {key} of {tls_dir}: {exc}") from None


def subject_dn(certificate: dict[str, Any]) -> str | None:
    """A peer certificate's subject (getpeercert()) as QEMU's authz compares it: the certificate's order, GnuTLS's
    names; None when an attribute has no such name."""
    parts = []
    for rdn in certificate.get("subject", ()):
        names = [(GNUTLS_NAMES.get(key), value) for key, value in rdn]
        if any(pair[0] is None for pair in names):
            return None
        parts.append("+".join(f"{name}={_escape(value)}" for name, value in names))
    return ",".join(parts)


def _escape(value: str) -> str:
    """An attribute value as RFC 4514 writes it."""
    escaped = re.sub(r'([\\"+,;<>])', r"\\\1", value)
    if escaped[:1] in ("#", " "):
        escaped = "\\" + escaped
    return escaped[:-1] + "\\ " if escaped.endswith(" ") else escaped


# -- the listener (target host) -----------------------------------------------------------------------------------

def listening(task: Any) -> dict[str, Any]:
    """The qemu_migration_probe module's state=listening: a detached listener on `address`, for `timeout` s."""
    params = task.params
    address, timeout = params["address"].strip("[]"), params["timeout"]
    _check_address(address)
    if not 0 < timeout <= MAX_LISTEN_SECONDS:
        raise LinkTestError(f"timeout must be more than 0 and at most {MAX_LISTEN_SECONDS} seconds, got {timeout}")
    if not 0 <= params["port"] <= 65535:
        raise LinkTestError(f"port must be 0 (a free one) or a TCP port, got {params['port']}")
    tls = _tlsqemu.server(params)
    context = server_context(tls) if tls else None
    if task.check_mode:
        return {"changed": True, "port": 0, "token": "", "pid": None,
                "msg": f"would listen on {host_port(address, params['port'])} for {timeout:g} s"}
    token = secrets.token_hex(32)
    port, pid = start_listener(address, params["port"], timeout, token, context, tls.peer_dn if tls else None)
    return {"changed": True, "port": port, "token": token, "pid": pid,
            "msg": f"listening on {host_port(address, port)}{' (TLS)' if tls else ''} for {timeout:g} s, pid {pid}"}


def _check_address(address: str) -> None:
    try:
        unspecified = ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return
    if unspecified:
        raise LinkTestError(f"address {address} listens on every address of the host: give the host's migration "
                            "address")


def start_listener(address: str, port: int, timeout: float, token: str, context: ssl.SSLContext | None,
                   peer_dn: str | None) -> tuple[int, int]:
    """Bind `address`:`port` (0: a free port), then serve in a detached process until the deadline. Returns the port
    and the listener's pid; it listens when this returns."""
    deadline = time.monotonic() + timeout
    try:
        listener = socket.create_server((address, port), family=socket.AF_INET6 if ":" in address else socket.AF_INET)
    except OSError as exc:
        raise LinkTestError(f"cannot listen on {host_port(address, port)}: {exc.strerror or exc}: give an address of "
                            "this host and a free port (0 picks one)") from None
    with listener:
        pid = _detach(lambda: serve(listener, token.encode("ascii"), deadline, context, peer_dn), listener.fileno())
        return listener.getsockname()[1], pid


def _detach(body: Callable[[], None], keep: int) -> int:
    """Run `body` in a grandchild in a session of its own, its standard streams on /dev/null and every other file
    but `keep` closed, so that neither Ansible nor this module's process waits for it. Returns its pid."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        # Nothing may leave this block but os._exit: the forked copy of the module must never return into it.
        try:
            os.close(reader)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.close(writer)
                devnull = os.open(os.devnull, os.O_RDWR)
                for stream in (0, 1, 2):
                    os.dup2(devnull, stream)
                os.closerange(3, keep)
                os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
                body()
            else:
                os.write(writer, str(grandchild).encode("ascii"))
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        text = pipe.read()
    os.waitpid(child, 0)
    if not text:
        raise LinkTestError("the listener process did not start")
    return int(text)


def serve(listener: socket.socket, token: bytes, deadline: float, context: ssl.SSLContext | None,
          peer_dn: str | None) -> None:
    """Accept connections until the one that presents the token (and with TLS the admitted certificate) has sent
    its stream and got its answer, or until the deadline."""
    refused = 0
    while (remaining := deadline - time.monotonic()) > 0:
        listener.settimeout(remaining)
        try:
            connection = listener.accept()[0]
        except TimeoutError:
            return
        try:
            stream = _admit(connection, token, min(PRESENT_TIMEOUT, remaining), context, peer_dn)
        except (OSError, ValueError):
            connection.close()
            refused += 1
            continue
        with stream:
            try:
                _answer(stream, deadline, refused)
            except (OSError, ValueError):
                pass  # the sender reports the broken stream
        return


def _admit(connection: socket.socket, token: bytes, timeout: float, context: ssl.SSLContext | None,
           peer_dn: str | None) -> socket.socket:
    """The connection's stream once it has shown the admitted certificate (with TLS) and the token."""
    connection.settimeout(timeout)
    stream = context.wrap_socket(connection, server_side=True) if context else connection
    try:
        if peer_dn is not None and subject_dn(stream.getpeercert() or {}) != peer_dn:
            raise ValueError("another client certificate")
        if not hmac.compare_digest(_exactly(stream, len(token)), token):
            raise ValueError("a wrong token")
    except BaseException:
        stream.close()
        raise
    return stream


def _answer(stream: socket.socket, deadline: float, refused: int) -> None:
    started = time.monotonic()
    received = _receive(stream, deadline)
    seconds = time.monotonic() - started
    stream.settimeout(REPLY_TIMEOUT)
    stream.sendall(json.dumps({"bytes": received, "seconds": seconds, "refused": refused}).encode() + b"\n")


def _receive(stream: socket.socket, deadline: float) -> int:
    """The bytes of every frame up to the empty one."""
    header, buffer = memoryview(bytearray(HEADER)), memoryview(bytearray(CHUNK))
    received = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the listener's time is up")
        stream.settimeout(remaining)
        _fill(stream, header)
        size = int.from_bytes(header, "big")
        if size == 0:
            return received
        if size > CHUNK:
            raise ValueError(f"a frame of {size} bytes")
        _fill(stream, buffer[:size])
        received += size


def _exactly(stream: socket.socket, size: int) -> bytes:
    data = bytearray(size)
    _fill(stream, memoryview(data))
    return bytes(data)


def _fill(stream: socket.socket, view: memoryview) -> None:
    while view:
        count = stream.recv_into(view)
        if count == 0:
            raise ConnectionError("the peer closed the connection")
        view = view[count:]


# -- the sender (source host) -------------------------------------------------------------------------------------

def measure_link(address: str, port: int, token: str, seconds: float, tls: _tlsqemu.Client | None) -> dict[str, Any]:
    """Send random bytes to the listener for `seconds`; the rate is what the listener received in its own time.
    Raises LinkTestError saying why the test could not be made."""
    target = host_port(address, port)
    try:
        connection = socket.create_connection((address, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise LinkTestError(f"cannot connect to the listener at {target}: {_reason(exc)} (is it listening there, "
                            "started by state=listening on the target, and not past its timeout?)") from None
    try:
        with connection:
            connection.settimeout(REPLY_TIMEOUT)
            stream = client_context(tls).wrap_socket(connection, server_hostname=tls.hostname or address) \
                if tls else connection
            with stream:
                sent, sent_seconds = _send(stream, token, seconds)
                reply = _reply(stream)
    except ConnectionError as exc:
        raise LinkTestError(f"the listener at {target} ended the connection ({_reason(exc)}) before its answer: it "
                            "refused this sender (another token, or a certificate it does not admit), or its time "
                            "was up") from None
    except (OSError, ValueError) as exc:
        raise LinkTestError(f"the link test with {target} failed: {_reason(exc)}") from None
    if reply["bytes"] != sent:
        raise LinkTestError(f"the listener at {target} received {reply['bytes']} bytes of the {sent} sent")
    return {"link_rate": round(reply["bytes"] / reply["seconds"]) if reply["seconds"] > 0 else None,
            "link_bytes": reply["bytes"], "link_seconds": round(reply["seconds"], 4),
            "link_sender_bytes": sent, "link_sender_seconds": round(sent_seconds, 4),
            "link_refused": reply["refused"]}


def _send(stream: socket.socket, token: str, seconds: float) -> tuple[int, float]:
    frame = CHUNK.to_bytes(HEADER, "big") + os.urandom(CHUNK)
    stream.sendall(token.encode("ascii"))
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        stream.sendall(frame)
        sent += CHUNK
    stream.sendall(bytes(HEADER))
    return sent, time.monotonic() - started


def _reply(stream: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        more = stream.recv(MAX_REPLY)
        if not more:
            raise ConnectionError("closed")
        data += more
        if len(data) > MAX_REPLY:
            raise ValueError("the listener's answer is too long")
    reply = json.loads(data)
    numbers = ("bytes", "seconds", "refused")
    if not isinstance(reply, dict) or not all(isinstance(reply.get(key), (int, float)) for key in numbers):
        raise ValueError(f"the listener's answer {data[:200]!r} is not the expected one")
    return reply


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
