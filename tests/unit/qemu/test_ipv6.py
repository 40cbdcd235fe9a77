"""An IPv6 migration address: QEMU listens on it and the URI brackets it (tcp:[::1]:PORT), else the port could not
be told from the address."""
from __future__ import annotations

import socket

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import host_port
from ansible_collections.livemig.qemu.plugins.module_utils._nbdcopy import nbd_uri


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_host_port_brackets_ipv6_only():
    assert host_port("::1", 4444) == "[::1]:4444"
    assert host_port("2001:db8::12", "0") == "[2001:db8::12]:0"
    assert host_port("192.0.2.12", 4444) == "192.0.2.12:4444"
    assert host_port("hv2.example", 4444) == "hv2.example:4444"
    assert nbd_uri("2001:db8::12", 10809, "root-x") == "nbd://[2001:db8::12]:10809/root-x"


def test_the_listening_uri_of_an_ipv6_address_is_bracketed(qemu, tmp_path):
    if not has_ipv6_loopback():
        pytest.fail("this machine has no IPv6 loopback (::1) to listen on")
    qemu("vm1", "-machine", "none", "-incoming", "defer")
    result = conftest.run_module("qemu_migrate_incoming", tmp_path, name="vm1", run_dir=str(tmp_path), address="::1")
    assert result.get("failed") is not True, result
    port = result["port"]
    assert result["uri"] == f"tcp:[::1]:{port}" and port > 0
    again = conftest.run_module("qemu_migrate_incoming", tmp_path, name="vm1", run_dir=str(tmp_path), address="::1")
    assert again["changed"] is False and again["uri"] == result["uri"], "read back from QEMU, bracketed as well"
    with socket.socket(socket.AF_INET6) as taken:
        with pytest.raises(OSError, match="Address already in use"):
            taken.bind(("::1", port))  # QEMU listens there (a connection would start the incoming migration)
