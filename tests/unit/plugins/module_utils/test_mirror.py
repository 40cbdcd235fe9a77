"""The mirror primitives' decisions that a real QEMU only shows by chance (a race), on a scripted session."""
from __future__ import annotations

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils import _mirror
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError


class BusyNode:
    """A QEMU whose NBD node refuses blockdev-del `refusals` times (still held by the job that just ended)."""

    def __init__(self, refusals: int):
        self.refusals = refusals
        self.present = True
        self.sent: list[str] = []

    def execute(self, command, arguments=None, timeout=None):
        self.sent.append(command)
        if command == "query-named-block-nodes":
            return [{"node-name": "livemig-nbd-disk-root"}] if self.present else []
        if command == "blockdev-del":
            if self.refusals:
                self.refusals -= 1
                raise QMPError("Node 'livemig-nbd-disk-root' is busy: block device is in use by block job: mirror",
                               "blockdev-del", "GenericError")
            self.present = False
            return {}
        raise AssertionError(f"unexpected {command}")


def test_a_node_still_held_by_the_ended_job_is_detached_once_released():
    session = BusyNode(refusals=3)
    _mirror.detach(session, "livemig-nbd-disk-root", timeout=5)
    assert not session.present and session.sent.count("blockdev-del") == 4


def test_a_node_that_stays_busy_fails_after_the_timeout():
    session = BusyNode(refusals=10 ** 6)
    with pytest.raises(QMPError, match="is busy"):
        _mirror.detach(session, "livemig-nbd-disk-root", timeout=0.2)
    assert session.present
