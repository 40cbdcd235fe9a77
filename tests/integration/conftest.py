"""Integration tests: the documented playbooks against the two-host lab, with the test guest under real QEMU."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "harness"))
from lab import (  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
    LAB_DIR, REPO as REPO_ROOT, RING_BLOCKS, Lab, build_guest, guestcheck, lab_path, lab_up, link, wait_until)

# QEMU 10.0's block mirror counts the zeroes it writes into a fresh target against its speed limit, so a mirror
# under livemig_max_bandwidth takes the disk's virtual size / bandwidth. Tests that slow a move down to act during
# its pre-copy give their VM this small a disk (the ring and the prefill fit).
SMALL_DISK_MB = 64


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


def settle(tap, host: str) -> None:
    """Wait until the guest on `host` runs its workload and has verified memory once."""
    tap.wait_for(r"^LMREADY", label=host, timeout=60)
    tap.wait_for(r"^PC \d+ OK", label=host, timeout=60)


@contextlib.contextmanager
def watched(lab, name: str, host: str) -> Iterator:
    """The guest's console, tapped for the block and settled on `host` first; the tap stops when the block ends."""
    tap = lab.tap(name)
    try:
        settle(tap, host)
        yield tap
    finally:
        tap.stop()


def precopy_running(lab, name: str, host: str = "hv1") -> bool:
    """RAM pre-copy from `host` has started moving data."""
    info = lab.qmp(host, name, "query-migrate")
    return info.get("status") == "active" and info.get("ram", {}).get("transferred", 0) > 0


def last_ring(tap) -> int:
    """The sequence number of the guest's last disk-ring write seen on its console."""
    return guestcheck.analyze(tap.snapshot())["last_ring_seq"]


def move_and_verify(lab, name: str, digest: str, source: str, target: str, method: str = "live-mirror",
                    **extra) -> dict:
    """Move a running guest and check it (migrate_and_check), then stop it on the target and check its disk."""
    with watched(lab, name, source) as tap:
        report = migrate_and_check(lab, tap, name, source, target, method, **extra)
        ring = last_ring(tap)
    finish_and_check_disk(lab, name, target, digest, ring)
    return report


def migrate_and_check(lab, tap, name: str, source: str, target: str, method: str = "live-mirror", **extra) -> dict:
    """Migrate through the documented playbook; the guest must go on where it was, without losing an update."""
    before = time.monotonic()
    result = lab.migrate(name, source, target, **extra)
    assert not result.failed, result.output
    after = time.monotonic()
    # The guest keeps running on the target and verifies its memory there.
    tap.wait_for(r"^HB \d+", label=target, timeout=30, since=after)
    tap.wait_for(r"^PC \d+ OK", label=target, timeout=60, since=after)
    summary = guestcheck.analyze(tap.snapshot())
    assert summary["pagecheck_failures"] == []
    assert summary["hb_seq_errors"] == 0
    assert lab.pid(source, name) is None, "the source QEMU must be gone"
    assert lab.qmp(target, name, "query-status")["status"] == "running"
    assert lab.record(target, name)["owner"] is True
    assert lab.record(source, name) is None, "the source keeps no record of a VM it no longer owns"
    report = lab.report(name)
    assert report["method"] == method, report["plan"]
    if method.startswith("live"):
        assert report["statistics"]["status"] == "completed"
    assert report["target"] == target
    report["guest_visible_downtime_s"] = summary["max_gap_s"]
    report["window"] = (before, after)
    return report


def finish_and_check_disk(lab, name: str, host: str, digest: str, min_seq: int) -> None:
    lab.stop(name)
    image = lab.disk_path(name, host)
    ring = guestcheck.check_ring(image, RING_BLOCKS, min_seq=min_seq)
    assert ring["ok"], ring["problems"]
    assert guestcheck.hash_outside_ring(image, RING_BLOCKS) == digest, "the disk outside the ring changed"


@pytest.fixture
def host_vars(lab):
    """Override a lab host's inventory variables for one test."""
    touched = set()

    def override(host: str, **variables) -> None:
        touched.add(host)
        lab.set_host_vars(host, **variables)

    yield override
    for host in touched:
        lab.set_host_vars(host)
