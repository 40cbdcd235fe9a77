"""A target host that drops off the network mid-move, on a lab variant with one network for management and
migration: the play fails within a bound, the VM keeps running on the source, and once the link is back a re-run
removes the stale target QEMU and moves the VM."""
from __future__ import annotations

import threading
import time

import pytest
from conftest import link, migrate_and_check, precopy_running, wait_until, watched

BOUND_S = 150  # "about 2 minutes": the stall timeout (60 s) and the rollback, with the target's SSH going dead
ONE_NETWORK = {"hv1": "198.18.0.1", "hv2": "198.18.0.2"}  # the management addresses carry the migration too


@pytest.fixture
def one_network(lab, host_vars):
    """The lab with one network for management and migration; the certificates name the new addresses (the TLS
    check refuses a target certificate without its migration address), and again the lab's own afterwards."""
    for host, address in ONE_NETWORK.items():
        host_vars(host, livemig_migration_address=address)
    issue_certificates(lab)
    yield
    link("hv2", "mgmt-up")
    for host in ONE_NETWORK:
        lab.set_host_vars(host)
    issue_certificates(lab)


def issue_certificates(lab) -> None:
    issued = lab.play("certificates")
    assert not issued.failed, issued.output


def cut_when(condition, what: str, cut: list) -> threading.Thread:
    def run():
        wait_until(condition, 300, what)
        link("hv2", "mgmt-down")
        cut.append(time.monotonic())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("phase", ["disk mirror", "RAM pre-copy"])
def test_a_target_that_drops_off_the_network_fails_the_move_in_bound_and_a_rerun_moves_the_vm(
        lab, vm, one_network, phase):
    name = vm("light")
    lab.start(name, "hv1", prefill=False)
    with watched(lab, name, "hv1") as tap:
        cut: list[float] = []
        if phase == "disk mirror":  # 4 MiB/s keeps the 1 GiB mirror busy long enough to be cut
            cutter = cut_when(lambda: lab.qmp("hv1", name, "query-block-jobs"), "the disk mirror to start", cut)
            extra = {"livemig_max_bandwidth": 4 * 1024 * 1024, "livemig_predict": False}  # the prediction refuses it
        else:
            cutter = cut_when(lambda: precopy_running(lab, name), "RAM pre-copy to start", cut)
            extra = {}
        failed = lab.migrate(name, "hv1", "hv2", **extra)
        ended = time.monotonic()
        cutter.join(timeout=10)
        assert cut, "the link was never cut"
        assert failed.failed, failed.output
        assert f"failed in the {phase}" in failed.output, failed.output
        assert "unreachable=1" not in failed.output, "the rollback must run: no host may end up unreachable"
        print(f"the play failed {ended - cut[0]:.1f}s after the cut")
        assert ended - cut[0] < BOUND_S, f"the play took {ended - cut[0]:.0f}s after the cut"
        assert lab.qmp("hv1", name, "query-status")["status"] == "running", "the VM must run, not paused, on hv1"
        assert lab.record("hv1", name)["owner"] is True
        assert lab.qmp("hv1", name, "query-block-jobs") == []
        link("hv2", "mgmt-up")
        # Back on the network, the target still has the incoming QEMU of the failed move: the re-run removes it.
        assert lab.pid("hv2", name) is not None
        report = migrate_and_check(lab, tap, name, "hv1", "hv2")
    assert report["method"] == "live-mirror"
