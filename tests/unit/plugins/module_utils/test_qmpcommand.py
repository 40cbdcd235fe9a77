"""qemu_qmp's handler: the JMESPath query is checked before anything runs, and check mode runs only query-*."""
from __future__ import annotations

import pytest

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.livemig.qemu.plugins.module_utils import _qmpcommand
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError


class NoVM:
    """A Task that fails the test when the handler looks for the VM."""

    def __init__(self, check_mode: bool, **params):
        self.check_mode = check_mode
        self.params = {"arguments": {}, "query": None, "monitor": "main", "timeout": 30, **params}

    @property
    def paths(self):
        raise AssertionError("the handler must not look for the VM")

    def qmp(self, path):
        raise AssertionError(f"the handler must not connect to {path}")


def test_without_jmespath_a_query_fails_naming_the_library(monkeypatch):
    monkeypatch.setattr(_qmpcommand, "JMESPATH_IMPORT_ERROR", "Traceback: no module named jmespath")
    with pytest.raises(LivemigError) as failure:
        _qmpcommand.run(NoVM(False, command="query-status", query="status"))
    assert str(failure.value) == missing_required_lib("jmespath")
    assert failure.value.fields() == {"exception": "Traceback: no module named jmespath"}


def test_without_jmespath_a_command_without_query_still_runs(monkeypatch):
    monkeypatch.setattr(_qmpcommand, "JMESPATH_IMPORT_ERROR", "Traceback: no module named jmespath")
    assert _qmpcommand.run(NoVM(True, command="stop")) == {
        "changed": True, "skipped_reason": "check mode: only query-* commands run"}


def test_an_invalid_query_fails_before_anything_runs():
    with pytest.raises(LivemigError, match=r"^invalid JMESPath query 'ram\.\[': "):
        _qmpcommand.run(NoVM(True, command="query-migrate", query="ram.["))


def test_check_mode_skips_a_command_that_changes():
    assert _qmpcommand.run(NoVM(True, command="migrate-set-parameters", query="status")) == {
        "changed": True, "skipped_reason": "check mode: only query-* commands run"}
