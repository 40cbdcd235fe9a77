"""Post-copy with postcopy-preempt on both sides under TCG on QEMU 10.0, and why multifd waits for QEMU 10.1."""
from __future__ import annotations

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._migration import MigrationFailed, MigrationSettings
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession
from test_migration import (  # pylint: disable=unused-import  # `pair` is a fixture
    CAP, DIRTY_START, MB, pair, random_area_arrived, wait_status)
from test_postcopy import migrate

POSTCOPY_BANDWIDTH = 4 * MB  # post-copy lasts a few seconds


def test_postcopy_with_preempt_on_both_sides_completes(pair):
    capabilities = ["postcopy-ram", "postcopy-preempt"]
    vms = pair(disk=False, guest=8, target_capabilities=capabilities)
    stats, statuses = migrate(vms, MigrationSettings(
        uri=vms.uri, max_bandwidth=CAP, convergence="postcopy-early", capabilities=capabilities,
        parameters={"max-postcopy-bandwidth": POSTCOPY_BANDWIDTH}, sample_interval=0.2))
    assert not isinstance(stats, MigrationFailed), stats
    assert stats["postcopy_started"] is True and statuses[-2:] == ["postcopy-active", "completed"]
    assert {item["capability"] for item in vms.src.execute("query-migrate-capabilities") if item["state"]} \
        >= set(capabilities)
    assert stats["postcopy_requests"] > 0
    assert wait_status(vms.tgt, "running") == "running"
    assert conftest.guest_keeps_changing(vms.tgt, DIRTY_START, timeout=5) and random_area_arrived(vms)


def test_qemu_10_0_refuses_multifd_with_postcopy(qemu):
    """Why the planner leaves one of them out before QEMU 10.1 (QEMU 10.0 here)."""
    vm = qemu("vm1", "-machine", "none", "-S")
    with QMPSession(vm.qmp, connect_timeout=5) as session:
        with pytest.raises(QMPError, match="Postcopy is not yet compatible with multifd"):
            session.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": name, "state": True} for name in ("multifd", "postcopy-ram")]})
