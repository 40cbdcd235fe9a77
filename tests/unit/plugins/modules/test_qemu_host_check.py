"""qemu_host_check's `address`: whether this host can listen on its migration address."""
from __future__ import annotations

import conftest
import pytest

SPEC = {"memory_mb": 32, "vcpus": 1, "machine": "pc", "cpu_model": "qemu64", "accel": "tcg"}


def check(tmp_path, **args) -> dict:
    result = conftest.run_module("qemu_host_check", tmp_path, name="vm1", run_dir=str(tmp_path), spec=SPEC, **args)
    assert "failed" not in result, result
    return result


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "localhost"])
def test_an_address_of_this_host_is_bindable(tmp_path, address):
    assert check(tmp_path, address=address)["address"] == {"address": address, "bindable": True}


def test_an_address_this_host_does_not_have_is_named_so(tmp_path):
    found = check(tmp_path, address="198.51.100.77")["address"]  # TEST-NET-2: on no host
    assert found == {"address": "198.51.100.77", "bindable": False,
                     "reason": "this host does not have that address (EADDRNOTAVAIL)"}


def test_a_name_that_does_not_resolve_is_named_so(tmp_path):
    found = check(tmp_path, address="no-such-host.invalid")["address"]
    assert found["bindable"] is False and found["reason"].startswith("it does not resolve")


def test_no_address_no_check(tmp_path):
    result = check(tmp_path)
    assert "address" not in result and result["problems"] == []
