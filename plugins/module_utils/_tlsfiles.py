# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's TLS directory in QEMU's x509 layout, as preflight reads it: what is missing or too open, and the public
certificates (never a key).

Private to the livemig.qemu collection. It runs on the managed host and needs the standard library only: the
controller parses the certificates (`_tlscert.tls_problems`).
"""
from __future__ import annotations

import os
import stat
from typing import Any

CA_CERT = "ca-cert.pem"
SERVER_CERT, SERVER_KEY = "server-cert.pem", "server-key.pem"
CLIENT_CERT, CLIENT_KEY = "client-cert.pem", "client-key.pem"
DH_PARAMS = "dh-params.pem"
FILES = (CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY, DH_PARAMS)
DH_HEADER = "-----BEGIN DH PARAMETERS-----"
FIX = "run the livemig.qemu.certificates playbook, or put the host's own certificates there"


def inspect(tls_dir: str) -> dict[str, Any]:
    """The `tls` result of qemu_host_check: dir, exists, problems, and the PEM text of the three certificates."""
    found: dict[str, Any] = {"dir": tls_dir, "exists": os.path.isdir(tls_dir), "problems": [],
                             "ca_pem": None, "cert_pem": None, "client_cert_pem": None}
    if not found["exists"]:
        found["problems"].append(f"the TLS directory {tls_dir} does not exist: {FIX}")
        return found
    problems = found["problems"]
    problems += access_problems(tls_dir, os.stat(tls_dir), "chmod 0700")
    missing = []
    for name in FILES:
        path = os.path.join(tls_dir, name)
        try:
            status = os.stat(path)
        except FileNotFoundError:
            missing.append(name)
            continue
        if not stat.S_ISREG(status.st_mode):
            problems.append(f"{path} is not a regular file")
            continue
        problems += access_problems(path, status, "chmod 0600")
    if missing:
        problems.append(f"{tls_dir} lacks {', '.join(missing)}: {FIX}")
    for key, name in (("ca_pem", CA_CERT), ("cert_pem", SERVER_CERT), ("client_cert_pem", CLIENT_CERT)):
        found[key] = read_text(os.path.join(tls_dir, name), problems)
    dh_params = read_text(os.path.join(tls_dir, DH_PARAMS), problems)
    if dh_params is not None and not dh_params.lstrip().startswith(DH_HEADER):
        problems.append(f"{os.path.join(tls_dir, DH_PARAMS)} holds no PEM DH parameters ({DH_HEADER})")
    return found


def access_problems(path: str, status: os.stat_result, fix: str) -> list[str]:
    """Group or others may use it, or it belongs to someone else than root or this user."""
    problems = []
    if status.st_mode & 0o077:
        problems.append(f"{path} has mode {stat.S_IMODE(status.st_mode):04o}, open to group or others: {fix} {path}")
    if status.st_uid not in (0, os.geteuid()):
        problems.append(f"{path} belongs to uid {status.st_uid}, neither root nor this user (uid {os.geteuid()})")
    return problems


def read_text(path: str, problems: list[str]) -> str | None:
    """A small text file's content; None when it is missing (already reported) or unreadable (reported here)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read(1 << 20)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"cannot read {path}: {exc}")
        return None
