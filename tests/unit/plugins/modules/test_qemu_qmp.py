"""qemu_qmp on a host without jmespath: a query fails saying which library to install, before any QMP."""
from __future__ import annotations

import conftest


def test_a_query_without_jmespath_fails_naming_the_library(tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "jmespath.py").write_text('raise ImportError("No module named jmespath")\n', encoding="ascii")
    result = conftest.run_module("qemu_qmp", tmp_path, env={"PYTHONPATH": f"{hidden}:{conftest.COLLECTIONS}"},
                                 name="vm1", host={"run_dir": str(tmp_path)}, command="query-status", query="status")
    assert result["failed"] is True
    assert result["msg"].startswith("Failed to import the required Python library (jmespath) on ")
