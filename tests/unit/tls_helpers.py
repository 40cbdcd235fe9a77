"""Certificates for the TLS tests, issued by the collection's own code and laid out as the hypervisor role does."""
from __future__ import annotations

import dataclasses
import os
import shutil

import conftest

from ansible_collections.livemig.qemu.plugins.module_utils import _tlscert

DH_PARAMS = os.path.join(conftest.REPO, "roles", "hypervisor", "files", "dh-params.pem")


def request(ca_dir, name: str, ips=("127.0.0.1",), **changes) -> _tlscert.Request:
    """What the role asks for host `name`: CN=name, its IPs, its name as DNS name, in <ca_dir>/hosts/<name>."""
    made = _tlscert.Request(ca_dir=str(ca_dir), dest=os.path.join(str(ca_dir), "hosts", name), common_name=name,
                            ip_addresses=tuple(ips), dns_names=(name,), validity_days=825, renew_days=30)
    return dataclasses.replace(made, **changes)


def issue(ca_dir, name: str, ips=("127.0.0.1",), now=None, **changes) -> dict:
    return _tlscert.ensure(request(ca_dir, name, ips, **changes), check_mode=False, now=now)


def lay_out(issued: dict, tls_dir, client: bool = True, server: bool = True, dh_params: bool = True) -> str:
    """The role's copy into a host's TLS directory: ca-cert.pem, the host's certificate and key as server and as
    client, dh-params.pem; the directory 0700, the files 0600."""
    files = {"ca-cert.pem": issued["ca_cert"]}
    if server:
        files.update({"server-cert.pem": issued["cert"], "server-key.pem": issued["key"]})
    if client:
        files.update({"client-cert.pem": issued["cert"], "client-key.pem": issued["key"]})
    if dh_params:
        files["dh-params.pem"] = DH_PARAMS
    os.makedirs(tls_dir, mode=0o700)
    for name, source in files.items():
        shutil.copyfile(source, os.path.join(tls_dir, name))
        os.chmod(os.path.join(tls_dir, name), 0o600)
    return str(tls_dir)
