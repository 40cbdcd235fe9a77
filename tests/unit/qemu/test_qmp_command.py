"""qemu_qmp against a real QEMU, through the `host` dict or the separate options alike."""
from __future__ import annotations

import conftest


def qmp(tmp_path, check_mode=False, **args) -> dict:
    result = conftest.run_module("qemu_qmp", tmp_path, check_mode, name="vm1", **args)
    assert "failed" not in result, result
    return result


def test_a_query_through_the_host_dict_and_through_the_options_alike(qemu, tmp_path):
    qemu("vm1", "-S")
    in_one = qmp(tmp_path, host={"run_dir": str(tmp_path)}, command="query-status", query="status")
    separate = qmp(tmp_path, check_mode=True, run_dir=str(tmp_path), command="query-status", query="status")
    for result in (in_one, separate):
        assert result["changed"] is False and result["queried"] == "prelaunch"
        assert result["result"]["status"] == "prelaunch"


def test_a_command_that_changes_runs_outside_check_mode_only(qemu, tmp_path):
    qemu("vm1", "-S")
    skipped = qmp(tmp_path, check_mode=True, host={"run_dir": str(tmp_path)}, command="cont")
    assert skipped["changed"] is True and "result" not in skipped
    assert qmp(tmp_path, run_dir=str(tmp_path), command="query-status")["result"]["status"] == "prelaunch"
    ran = qmp(tmp_path, host={"run_dir": str(tmp_path)}, command="cont")
    assert ran["changed"] is True and ran["result"] == {} and "queried" not in ran
    assert qmp(tmp_path, run_dir=str(tmp_path), command="query-status")["result"]["status"] == "running"


def test_a_missing_monitor_fails_naming_it(tmp_path):
    result = conftest.run_module("qemu_qmp", tmp_path, name="vm1", host={"run_dir": str(tmp_path)},
                                 command="query-status", monitor="job", connect_timeout=0.5)
    assert result["failed"] is True and result["msg"].startswith(f"QMP on {tmp_path / 'vm1' / 'job.qmp'}: ")
