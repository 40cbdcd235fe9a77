"""A host's TLS directory as qemu_host_check reads it for preflight: what is missing or too open, and the public
certificates, never a key."""
from __future__ import annotations

import json
import os

import conftest
import pytest
from tls_helpers import issue, lay_out

from ansible_collections.livemig.qemu.plugins.module_utils import _tlsfiles


@pytest.fixture
def tls_dir(tmp_path):
    return lay_out(issue(tmp_path / "ca", "hv1"), tmp_path / "tls")


def read(path) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def test_a_directory_as_the_role_makes_it_has_no_problems_and_gives_the_public_certificates(tls_dir):
    found = _tlsfiles.inspect(tls_dir)
    assert found == {"dir": tls_dir, "exists": True, "problems": [],
                     "ca_pem": read(os.path.join(tls_dir, "ca-cert.pem")),
                     "cert_pem": read(os.path.join(tls_dir, "server-cert.pem")),
                     "client_cert_pem": read(os.path.join(tls_dir, "client-cert.pem"))}
    assert found["ca_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" not in json.dumps(found)


def test_a_missing_directory(tmp_path):
    assert _tlsfiles.inspect(str(tmp_path / "none")) == {
        "dir": str(tmp_path / "none"), "exists": False, "ca_pem": None, "cert_pem": None, "client_cert_pem": None,
        "problems": [f"the TLS directory {tmp_path / 'none'} does not exist: run the livemig.qemu.certificates "
                     "playbook, or put the host's own certificates there"]}


def test_missing_files_are_named_together(tls_dir):
    os.remove(os.path.join(tls_dir, "client-key.pem"))
    os.remove(os.path.join(tls_dir, "dh-params.pem"))
    os.remove(os.path.join(tls_dir, "server-cert.pem"))
    found = _tlsfiles.inspect(tls_dir)
    assert found["problems"] == [f"{tls_dir} lacks server-cert.pem, client-key.pem, dh-params.pem: run the "
                                 "livemig.qemu.certificates playbook, or put the host's own certificates there"]
    assert found["cert_pem"] is None and found["ca_pem"] is not None


def test_modes_open_to_group_or_others_and_foreign_owners(tls_dir):
    key, cert = os.path.join(tls_dir, "server-key.pem"), os.path.join(tls_dir, "ca-cert.pem")
    os.chmod(tls_dir, 0o750)
    os.chmod(key, 0o604)
    os.chown(cert, 4242, 4242)
    os.chmod(os.path.join(tls_dir, "client-key.pem"), 0o400)  # stricter than 0600 is fine
    assert _tlsfiles.inspect(tls_dir)["problems"] == [
        f"{tls_dir} has mode 0750, open to group or others: chmod 0700 {tls_dir}",
        f"{cert} belongs to uid 4242, neither root nor this user (uid {os.geteuid()})",
        f"{key} has mode 0604, open to group or others: chmod 0600 {key}"]


def test_no_regular_file_and_no_dh_parameters(tls_dir):
    os.remove(os.path.join(tls_dir, "client-cert.pem"))
    os.mkdir(os.path.join(tls_dir, "client-cert.pem"), 0o700)
    with open(os.path.join(tls_dir, "dh-params.pem"), "w", encoding="ascii") as handle:
        handle.write("-----BEGIN CERTIFICATE-----\n")
    found = _tlsfiles.inspect(tls_dir)
    assert found["problems"] == [
        f"{tls_dir}/client-cert.pem is not a regular file",
        f"{tls_dir}/dh-params.pem holds no PEM DH parameters (-----BEGIN DH PARAMETERS-----)"]
    assert found["client_cert_pem"] is None


def test_the_host_check_module_reports_tls_only_when_asked(tmp_path, tls_dir):
    dirs = {"name": "vm1", "run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "images")}
    spec = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg"}
    checked = conftest.run_module("qemu_host_check", tmp_path, spec=spec, tls_dir=tls_dir, **dirs)
    assert checked["tls"] == _tlsfiles.inspect(tls_dir) and checked["problems"] == [], checked
    assert "tls" not in conftest.run_module("qemu_host_check", tmp_path, spec=spec, **dirs)
