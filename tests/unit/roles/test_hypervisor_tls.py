"""The hypervisor role's TLS tasks through the livemig.qemu.certificates playbook, on this machine as the host:
the files in QEMU's x509 layout, a re-run that changes nothing, check mode, the user's own files checked; and the
DH parameters the role ships."""
from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
import sys

import conftest
from tls_helpers import DH_PARAMS

LAYOUT = ["ca-cert.pem", "client-cert.pem", "client-key.pem", "dh-params.pem", "server-cert.pem", "server-key.pem"]


def play(tmp_path, *options: str, check: bool = False, **variables) -> tuple[dict[str, int], str]:
    """ansible-playbook livemig.qemu.certificates for localhost; the recap's counts and the whole output."""
    extra = {"livemig_hosts": "localhost", "livemig_tls_dir": str(tmp_path / "tls"),
             "livemig_tls_ca_dir": str(tmp_path / "ca"), "livemig_migration_address": "127.0.0.1",
             "livemig_hypervisor_system_python": sys.executable, **variables}
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
            *(arg for name, value in extra.items() for arg in ("-e", f"{name}={value}")), *options,
            *(["--check"] if check else []), "livemig.qemu.certificates"]
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": conftest.COLLECTIONS, "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local-tmp"), "ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote-tmp")}
    env.pop("ANSIBLE_CONFIG", None)
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120)
    recap = re.search(r"^localhost\s+:\s+(.*)$", done.stdout, re.M)
    assert recap, done.stdout + done.stderr
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", recap.group(1))}, done.stdout + done.stderr


def test_generate_issues_the_certificate_and_copies_the_layout_private_and_roots(tmp_path):
    counts, output = play(tmp_path)
    assert counts["failed"] == 0 and counts["changed"] == 3, output
    tls, issued = tmp_path / "tls", tmp_path / "ca" / "hosts" / "localhost"
    assert sorted(os.listdir(tls)) == LAYOUT
    for path in [tls, *(tls / name for name in LAYOUT)]:
        status = os.stat(path)
        assert (stat.S_IMODE(status.st_mode), status.st_uid) == ((0o700 if path == tls else 0o600), 0), path
    assert (tls / "server-cert.pem").read_bytes() == (tls / "client-cert.pem").read_bytes() == (
        issued / "cert.pem").read_bytes()
    assert (tls / "server-key.pem").read_bytes() == (tls / "client-key.pem").read_bytes() == (
        issued / "key.pem").read_bytes()
    assert (tls / "ca-cert.pem").read_bytes() == (tmp_path / "ca" / "ca-cert.pem").read_bytes()
    assert (tls / "dh-params.pem").read_bytes() == open(DH_PARAMS, "rb").read()
    assert not (tmp_path / "tls" / "ca-key.pem").exists() and "BEGIN PRIVATE KEY" not in output

    again, output = play(tmp_path)
    assert again["changed"] == 0 and again["failed"] == 0, output
    moved, output = play(tmp_path, livemig_migration_address="127.0.0.9")
    assert moved["changed"] == 2 and moved["failed"] == 0, output  # a new certificate, copied as server and client


def test_check_mode_changes_nothing(tmp_path):
    counts, output = play(tmp_path, check=True)
    assert counts["failed"] == 0 and counts["changed"] == 1, output
    assert not (tmp_path / "tls").exists() and not (tmp_path / "ca").exists()


def test_generate_needs_the_migration_address(tmp_path):
    counts, output = play(tmp_path, livemig_migration_address="")
    assert counts["failed"] == 1 and "localhost has no livemig_migration_address" in output
    assert not (tmp_path / "ca").exists()


def test_provided_files_are_checked_and_what_is_wrong_is_named(tmp_path):
    play(tmp_path)
    os.remove(tmp_path / "tls" / "dh-params.pem")
    os.chmod(tmp_path / "tls" / "server-key.pem", 0o640)
    counts, output = play(tmp_path, livemig_tls_certificates="provided")
    assert counts["failed"] == 1, output
    assert (f"livemig_tls_certificates is provided, but on localhost these are missing: {tmp_path}/tls/dh-params.pem"
            f"; group or others may use {tmp_path}/tls/server-key.pem (make the files 0600, the directory 0700)."
            in output), output
    assert not (tmp_path / "tls" / "dh-params.pem").exists(), "provided copies nothing"
    shutil.copyfile(DH_PARAMS, tmp_path / "tls" / "dh-params.pem")
    os.chmod(tmp_path / "tls" / "dh-params.pem", 0o600)
    os.chmod(tmp_path / "tls" / "server-key.pem", 0o400)
    counts, output = play(tmp_path, livemig_tls_certificates="provided")
    assert counts["failed"] == 0 and counts["changed"] == 0, output


def der_integers(der: bytes) -> list[int]:
    """The INTEGERs of a DER SEQUENCE of INTEGERs, such as PKCS#3's DHParameter (p, g)."""
    def length(at: int) -> tuple[int, int]:
        if der[at] < 0x80:
            return der[at], at + 1
        count = der[at] & 0x7F
        return int.from_bytes(der[at + 1:at + 1 + count], "big"), at + 1 + count
    assert der[0] == 0x30 and length(1)[0] + length(1)[1] == len(der)
    numbers, at = [], length(1)[1]
    while at < len(der):
        assert der[at] == 0x02
        size, at = length(at + 1)
        numbers.append(int.from_bytes(der[at:at + size], "big"))
        at += size
    return numbers


def safe_prime(number: int) -> bool:
    """Miller-Rabin with the first 16 primes as bases (on a 2048-bit number: a false positive is out of reach)."""
    remainder, twos = number - 1, 0
    while remainder % 2 == 0:
        remainder, twos = remainder // 2, twos + 1
    for base in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53):
        value = pow(base, remainder, number)
        if value in (1, number - 1):
            continue
        for unused_round in range(twos - 1):
            value = pow(value, 2, number)
            if value == number - 1:
                break
        else:
            return False
    return True


def test_the_dh_parameters_are_rfc_7919_ffdhe2048():
    """p = 2^2048 - 2^1984 + (floor(2^1918 * e) + 560316) * 2^64 - 1, g = 2 (RFC 7919, appendix A.1)."""
    with open(DH_PARAMS, encoding="ascii") as handle:
        lines = handle.read().split()
    assert " ".join(lines[:3]) == "-----BEGIN DH PARAMETERS-----"
    assert " ".join(lines[-3:]) == "-----END DH PARAMETERS-----"
    numbers = der_integers(base64.b64decode("".join(lines[3:-3])))
    scale = 1 << (1918 + 64)
    e_scaled, term, k = 0, scale, 0
    while term:
        e_scaled, k = e_scaled + term, k + 1
        term //= k
    p = (1 << 2048) - (1 << 1984) + ((e_scaled >> 64) + 560316) * (1 << 64) - 1
    assert numbers == [p, 2]
    assert safe_prime(p) and safe_prime((p - 1) // 2)
