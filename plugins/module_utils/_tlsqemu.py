# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TLS on the streams between two hosts, as QEMU and its tools set it up: the x509 credentials of the receiving
end (with the one peer its authz admits) and of the sending end, for the migration stream, QEMU's NBD server and
client, and the stateful path's qemu-nbd and qemu-img.

Private to the livemig.qemu collection. It runs on the managed host and needs the standard library only. The modules
that open a stream take the options `tls_dir`, `tls_peer_dn` (the receiving end) and `tls_hostname` (the sending
end); without `tls_dir` the stream is cleartext, and every TLS setting an earlier move left on the VM is cleared.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._tlsfiles import (
    CA_CERT, CLIENT_CERT, CLIENT_KEY, FIX, SERVER_CERT, SERVER_KEY)

SERVER_CREDS = "livemig-tls-server"
CLIENT_CREDS = "livemig-tls-client"
PEER_AUTHZ = "livemig-authz-peer"
SERVER_OPTIONS: dict[str, Any] = {"tls_dir": {"type": "path"}, "tls_peer_dn": {"type": "str"}}
CLIENT_OPTIONS: dict[str, Any] = {"tls_dir": {"type": "path"}, "tls_hostname": {"type": "str"}}
# The migration parameters of TLS, all cleared for a cleartext stream (and for a state file, which QEMU refuses
# to write with TLS on): a VM that was the target of a TLS move keeps the server's credentials set otherwise.
CLEARTEXT = {"tls-creds": "", "tls-authz": "", "tls-hostname": ""}
MANAGED_PARAMETERS = {"tls-creds": "tls_dir", "tls-authz": "tls_peer_dn", "tls-hostname": "tls_hostname"}
HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


@dataclass(frozen=True)
class Server:
    """The receiving end: its TLS directory and the subject of the one client it admits (QEMU's DN form)."""
    dir: str
    peer_dn: str


@dataclass(frozen=True)
class Client:
    """The sending end: its TLS directory and the name the server's certificate must bear (None: the address
    connected to)."""
    dir: str
    hostname: str | None


def server(params: dict[str, Any]) -> Server | None:
    """The receiving end's TLS from the module's options; None for cleartext."""
    tls_dir, peer_dn = params.get("tls_dir"), params.get("tls_peer_dn")
    if not tls_dir:
        if peer_dn:
            raise LivemigError("tls_peer_dn needs tls_dir, the TLS directory whose server certificate to show")
        return None
    if not peer_dn or not peer_dn.strip() or not peer_dn.isprintable():
        raise LivemigError(f"tls_dir {tls_dir} needs tls_peer_dn, the subject of the client certificate to admit "
                           f"(such as CN=hv1), got {peer_dn!r}")
    check_dir(tls_dir, (CA_CERT, SERVER_CERT, SERVER_KEY))
    return Server(tls_dir, peer_dn)


def client(params: dict[str, Any]) -> Client | None:
    """The sending end's TLS from the module's options; None for cleartext."""
    tls_dir, hostname = params.get("tls_dir"), params.get("tls_hostname")
    if not tls_dir:
        if hostname:
            raise LivemigError("tls_hostname needs tls_dir, the TLS directory whose client certificate to show")
        return None
    if hostname is not None:
        hostname = hostname.strip("[]")
        if not _is_hostname(hostname):
            raise LivemigError(f"tls_hostname {params['tls_hostname']!r} is neither an IP address nor a DNS name")
    check_dir(tls_dir, (CA_CERT, CLIENT_CERT, CLIENT_KEY))
    return Client(tls_dir, hostname or None)


def _is_hostname(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(HOSTNAME.match(text)) and ".." not in text
    return True


def check_dir(tls_dir: str, names: tuple[str, ...]) -> None:
    """The files QEMU loads are there and readable; else the error says which and how to get them."""
    if not os.path.isabs(tls_dir):
        raise LivemigError(f"tls_dir {tls_dir} must be an absolute path")
    if not os.path.isdir(tls_dir):
        raise LivemigError(f"the TLS directory {tls_dir} does not exist: {FIX}")
    unreadable = [name for name in names if not os.access(os.path.join(tls_dir, name), os.R_OK)]
    if unreadable:
        raise LivemigError(f"the TLS directory {tls_dir} lacks {', '.join(unreadable)}, or they cannot be read: {FIX}")


# -- QEMU, over QMP -----------------------------------------------------------------------------------------------

def add_server(session: QMPSession, tls: Server) -> None:
    """The receiving end's credentials and authz in this QEMU, made again from the files as they are now."""
    _replace(session, {"qom-type": "tls-creds-x509", "id": SERVER_CREDS, "endpoint": "server", "dir": tls.dir,
                       "verify-peer": True})
    _replace(session, {"qom-type": "authz-simple", "id": PEER_AUTHZ, "identity": tls.peer_dn})


def add_client(session: QMPSession, tls: Client) -> None:
    """The sending end's credentials in this QEMU, made again from the files as they are now."""
    _replace(session, {"qom-type": "tls-creds-x509", "id": CLIENT_CREDS, "endpoint": "client", "dir": tls.dir,
                       "verify-peer": True})


def _replace(session: QMPSession, properties: dict[str, Any]) -> None:
    """object-add, after an object-del of ours of that id: QEMU reads the certificates when the object is made, and
    an NBD server or node already using the old object keeps it until it ends."""
    present = {item["name"] for item in session.execute("qom-list", {"path": "/objects"})}
    if properties["id"] in present:
        session.execute("object-del", {"id": properties["id"]})
    session.execute("object-add", properties)


def incoming_parameters(tls: Server | None) -> dict[str, Any]:
    """The migration parameters of the receiving end."""
    return {**CLEARTEXT, "tls-creds": SERVER_CREDS, "tls-authz": PEER_AUTHZ} if tls else dict(CLEARTEXT)


def outgoing_parameters(tls: Client | None) -> dict[str, Any]:
    """The migration parameters of the sending end."""
    if tls is None:
        return dict(CLEARTEXT)
    return {**CLEARTEXT, "tls-creds": CLIENT_CREDS, "tls-hostname": tls.hostname or ""}


def nbd_server_arguments(tls: Server | None) -> dict[str, Any]:
    """What nbd-server-start adds for TLS."""
    return {"tls-creds": SERVER_CREDS, "tls-authz": PEER_AUTHZ} if tls else {}


def nbd_client_options(tls: Client | None) -> dict[str, Any]:
    """What an NBD block node adds for TLS."""
    if tls is None:
        return {}
    return {"tls-creds": CLIENT_CREDS, **({"tls-hostname": tls.hostname} if tls.hostname else {})}


# -- qemu-nbd and qemu-img ----------------------------------------------------------------------------------------

def option_value(value: str) -> str:
    """A value inside QEMU's option syntax (key=value,...): its commas doubled."""
    return value.replace(",", ",,")


def qemu_nbd_arguments(tls: Server | None) -> list[str]:
    """The receiving qemu-nbd's TLS: x509 credentials that verify the client, and authz for the one peer."""
    if tls is None:
        return []
    return ["--object", f"tls-creds-x509,id={SERVER_CREDS},endpoint=server,dir={option_value(tls.dir)},"
                        "verify-peer=on",
            "--object", f"authz-simple,id={PEER_AUTHZ},identity={option_value(tls.peer_dn)}",
            "--tls-creds", SERVER_CREDS, "--tls-authz", PEER_AUTHZ]


def qemu_img_object(tls: Client) -> list[str]:
    """The sending qemu-img's x509 credentials."""
    return ["--object", f"tls-creds-x509,id={CLIENT_CREDS},endpoint=client,dir={option_value(tls.dir)}"]


def nbd_image_options(host: str, port: int, export: str, tls: Client) -> str:
    """An NBD export as qemu-img's --image-opts, over TLS."""
    options = {"driver": "nbd", "host": host, "port": str(port), "export": export, "tls-creds": CLIENT_CREDS}
    if tls.hostname:
        options["tls-hostname"] = tls.hostname
    return ",".join(f"{key}={option_value(value)}" for key, value in options.items())
