from __future__ import annotations

import json
import os
import threading
import time

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.livemig.qemu.plugins.modules import qemu_migrate_progress
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._progress import WAITING
from ansible_collections.livemig.qemu.plugins.module_utils._progress import line as progress_line

MIB = 1 << 20
VM = "web1"

MID_MIGRATION = {
    "phase": "pre-copy", "status": "active", "remaining": int(105.2 * MIB), "total": 256 * MIB,
    "transferred": 300 * MIB, "mbps": 950.3, "dirty_rate": int(12.1 * MIB), "passes": 3, "throttle": 0,
    "expected_downtime": 80, "downtime_limit_ms": 100, "disk_remaining": 0, "disk_total": 1024 * MIB,
    "finished": False, "message": "", "policy_actions": ["raised bandwidth", "raised downtime limit to 200 ms"],
}
EXAMPLE_LINE = ("pre-copy pass 3: RAM 41% left (105.2 MiB of 256.0 MiB), 950.3 Mbit/s, guest dirties 12.1 MiB/s, "
                "throttle 0%, downtime limit 100 ms; disks 0.0 MiB left; last action: raised downtime limit to 200 ms")


def progress_file(run_dir) -> str:
    path = VMPaths.on_host(VM, str(run_dir)).progress
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def write_sample(run_dir, **sample) -> None:
    """As qemu_migrate does: the whole sample at once, replacing the file."""
    path = progress_file(run_dir)
    with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
        json.dump({"t": time.time(), **sample}, handle)
    os.replace(f"{path}.tmp", path)


def run_module(capsys, run_dir, **params):
    with patch_module_args({"name": VM, "run_dir": str(run_dir), **params}):
        with pytest.raises(SystemExit) as exit_info:
            qemu_migrate_progress.main()
    output = json.loads(capsys.readouterr().out)
    assert bool(exit_info.value.code) == bool(output.get("failed")), output
    return output


# -- the module ------------------------------------------------------------------------------------

def test_no_file_yet_is_waiting_not_an_error(capsys, tmp_path):
    output = run_module(capsys, tmp_path, wait=0)
    assert not output.get("failed")
    assert output["changed"] is False
    assert output["started"] is False and output["finished"] is False
    assert output["progress"] == {}
    assert output["line"] == WAITING
    assert output["path"] == progress_file(tmp_path)
    assert "age" not in output


def test_mid_migration_waits_and_returns_the_latest_sample(capsys, tmp_path):
    write_sample(tmp_path, **MID_MIGRATION)
    began = time.monotonic()
    output = run_module(capsys, tmp_path, wait=0.4)
    assert 0.35 <= time.monotonic() - began < 3
    assert output["changed"] is False
    assert output["started"] is True and output["finished"] is False
    assert output["progress"]["passes"] == 3
    assert output["line"] == EXAMPLE_LINE
    assert 0 <= output["age"] < 3


def test_finished_sample_returns_at_once(capsys, tmp_path):
    write_sample(tmp_path, **{**MID_MIGRATION, "phase": "switchover", "status": "completed", "finished": True,
                              "outcome": "completed", "message": "switched over in 41 ms", "remaining": 0})
    began = time.monotonic()
    output = run_module(capsys, tmp_path, wait=30)
    assert time.monotonic() - began < 5
    assert output["finished"] is True
    assert output["line"].startswith("migration completed: switched over in 41 ms; last sample: switchover pass 3:")


def test_returns_as_soon_as_the_migration_finishes_during_the_wait(capsys, tmp_path):
    write_sample(tmp_path, **MID_MIGRATION)
    finished = {**MID_MIGRATION, "finished": True, "outcome": "failed", "message": "link down"}
    writer = threading.Timer(0.5, lambda: write_sample(tmp_path, **finished))
    writer.start()
    try:
        began = time.monotonic()
        output = run_module(capsys, tmp_path, wait=30)
        assert 0.4 <= time.monotonic() - began < 5
    finally:
        writer.join()
    assert output["finished"] is True
    assert output["progress"]["outcome"] == "failed"
    assert output["line"].startswith("migration failed: link down; last sample: pre-copy pass 3: RAM 41% left")


def test_sample_older_than_since_counts_as_not_started(capsys, tmp_path):
    write_sample(tmp_path, **{**MID_MIGRATION, "finished": True, "outcome": "completed", "t": 1000.0})
    output = run_module(capsys, tmp_path, wait=0, since=time.time() - 5)
    assert output["started"] is False and output["finished"] is False
    assert output["line"] == WAITING


@pytest.mark.parametrize("content, expected", [
    ("{\"t\": 1, \"phase\": ", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
])
def test_malformed_file_fails_clearly(capsys, tmp_path, content, expected):
    with open(progress_file(tmp_path), "w", encoding="utf-8") as handle:
        handle.write(content)
    output = run_module(capsys, tmp_path, wait=5)
    assert output["failed"] is True
    assert expected in output["msg"]
    assert progress_file(tmp_path) in output["msg"]


def test_check_mode_reads_the_same(capsys, tmp_path):
    write_sample(tmp_path, **MID_MIGRATION)
    output = run_module(capsys, tmp_path, wait=0, _ansible_check_mode=True)
    assert output["changed"] is False
    assert output["line"] == EXAMPLE_LINE


def test_invalid_vm_name_fails(capsys, tmp_path):
    with patch_module_args({"name": "../etc", "run_dir": str(tmp_path), "wait": 0}):
        with pytest.raises(SystemExit):
            qemu_migrate_progress.main()
    output = json.loads(capsys.readouterr().out)
    assert output["failed"] is True and "invalid VM name" in output["msg"]


# -- the line --------------------------------------------------------------------------------------

def test_line_for_the_example_sample():
    assert progress_line(MID_MIGRATION) == EXAMPLE_LINE


def test_line_during_the_disk_mirror():
    sample = {"phase": "mirror-sync", "status": "none", "disk_remaining": 512 * MIB, "disk_total": 1024 * MIB,
              "finished": False, "message": "waiting for the disk mirrors to be in sync", "policy_actions": []}
    assert progress_line(sample) == "mirror-sync; disks 512.0 MiB left; waiting for the disk mirrors to be in sync"


def test_line_tolerates_missing_and_odd_values():
    sample = {"status": "setup", "remaining": None, "total": "0", "mbps": "fast", "throttle": 12.5, "passes": 0,
              "downtime_limit_ms": True, "policy_actions": "not a list"}
    assert progress_line(sample) == "setup: throttle 12.5%"
    assert progress_line({"remaining": 3 * MIB}) == "migration: RAM 3.0 MiB left"


def test_line_when_cancelled_without_a_message():
    sample = {"phase": "pre-copy", "passes": 2, "finished": True, "outcome": "cancelled"}
    assert progress_line(sample) == "migration cancelled; last sample: pre-copy pass 2"
