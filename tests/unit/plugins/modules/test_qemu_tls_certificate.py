"""The qemu_tls_certificate module as Ansible runs it on the controller: its own process, its options."""
from __future__ import annotations

import os

import conftest


def run(tmp_path, check_mode=False, **args):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return conftest.run_module("qemu_tls_certificate", tmp_path, check_mode, env={"HOME": str(home)}, **args)


def test_the_default_ca_dir_is_in_the_controller_users_home_and_a_rerun_changes_nothing(tmp_path):
    dest = str(tmp_path / "hv1")
    predicted = run(tmp_path, True, dest=dest, common_name="hv1", ip_addresses=["198.18.0.1"])
    ca_dir = tmp_path / "home" / ".local" / "share" / "livemig.qemu" / "tls-ca"
    assert predicted["changed"] is True and not ca_dir.exists() and not os.path.exists(dest)
    first = run(tmp_path, dest=dest, common_name="hv1", ip_addresses=["198.18.0.1"], dns_names=["hv1"])
    assert first["changed"] is True and first["ca_cert"] == str(ca_dir / "ca-cert.pem")
    assert (first["cert"], first["key"], first["subject"]) == (f"{dest}/cert.pem", f"{dest}/key.pem", "CN=hv1")
    assert first["ip_addresses"] == ["198.18.0.1"] and first["dns_names"] == ["hv1"]
    again = run(tmp_path, dest=dest, common_name="hv1", ip_addresses=["198.18.0.1"], dns_names=["hv1"])
    assert again["changed"] is False and again["not_after"] == first["not_after"]
    moved = run(tmp_path, dest=dest, common_name="hv1", ip_addresses=["198.18.0.7"], dns_names=["hv1"])
    assert moved["changed"] is True and moved["ip_addresses"] == ["198.18.0.7"]


def test_bad_input_fails_with_a_message(tmp_path):
    failed = run(tmp_path, dest=str(tmp_path / "hv1"), common_name="hv1", ip_addresses=["hv1"])
    assert failed["failed"] is True and failed["msg"] == "ip_addresses: 'hv1' is not an IP address"
    assert not (tmp_path / "hv1").exists()
