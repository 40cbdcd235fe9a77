"""Integration tests: the documented playbooks against the two-host lab, with the test guest under real QEMU."""
from __future__ import annotations

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "harness"))
from lab import (  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
    LAB_DIR, RING_BLOCKS, Lab, build_guest, guestcheck, lab_path, lab_up, link, wait_until)


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> Lab:
    guest = build_guest()
    lab_up()
    return Lab(guest, str(tmp_path_factory.mktemp("lab")))


@pytest.fixture
def vm(lab, request):
    """A fresh VM name for one test, removed from both hosts afterwards."""
    names = []

    def make(workload: str = "light", **kwargs) -> str:
        name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40] + f"-{len(names)}"
        names.append(lab.define_vm(name, workload, **kwargs))
        return name

    yield make
    for name in names:
        lab.remove(name)
