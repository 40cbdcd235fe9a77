from __future__ import annotations

import json
import os
import subprocess
import sys

import conftest
import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.livemig.qemu.plugins.action.qemu_migration_report import ActionModule
from ansible_collections.livemig.qemu.plugins.module_utils import _files
from ansible_collections.livemig.qemu.plugins.module_utils._chart import (
    REPORT_MODE, ChartUnavailable, PredictedEnd, ReportError, chart_data, render_png, report_basename)
from ansible_collections.livemig.qemu.plugins.module_utils._chartphases import Band
from ansible_collections.livemig.qemu.plugins.modules import qemu_migration_report

MIB = 1 << 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = conftest.REPO
STARTED = 1767225600.0
FINISHED = STARTED + 20.4


def migration_result(**changes):
    """A live-mirror move as the role reports it: 4 s of disk mirror, then 5 s of pre-copy, then the switchover."""
    mirror = [{"t": STARTED + 2 + i, "disk_remaining": (1024 - 256 * i) * MIB, "disk_total": 1024 * MIB}
              for i in range(5)]
    history = [{"t": STARTED + 7 + i, "phase": "pre-copy", "status": "active", "remaining": (200 - 40 * i) * MIB,
                "total": 256 * MIB, "disk_remaining": 0, "passes": i + 1} for i in range(5)]
    result = {
        "vm": "web1", "source": "hv1", "target": "hv2", "method": "live-mirror", "plan": ["live-mirror: chosen"],
        "started": STARTED, "finished": FINISHED, "source_stop_time": STARTED + 12.2,
        "target_resume_time": STARTED + 12.25, "frozen_ms": 50.0,
        "statistics": {"history": history, "mirror_history": mirror, "downtime_ms": 31, "passes": 5},
    }
    result.update(changes)
    return result


# -- chart data (pure) -----------------------------------------------------------------------------

def test_report_basename_is_vm_and_whole_finished_second():
    assert report_basename(migration_result()) == "web1-1767225620"
    assert report_basename(migration_result(finished="1767225620.9")) == "web1-1767225620"


@pytest.mark.parametrize("changes, expected", [
    ({"vm": "../evil"}, "invalid VM name"),
    ({"vm": None}, "invalid VM name"),
    ({"finished": None}, "result.finished"),
    ({"finished": "soon"}, "result.finished"),
])
def test_report_basename_refuses_unusable_results(changes, expected):
    with pytest.raises(ReportError, match=expected):
        report_basename(migration_result(**changes))


def spans(data, phase):
    return [(band.start, band.end) for band in data.phases if band.phase == phase]


def test_chart_data_in_seconds_since_started_and_mib():
    data = chart_data(migration_result())
    assert data.ram == [(7.0, 200.0), (8.0, 160.0), (9.0, 120.0), (10.0, 80.0), (11.0, 40.0)]
    assert data.disk[:5] == [(2.0, 1024.0), (3.0, 768.0), (4.0, 512.0), (5.0, 256.0), (6.0, 0.0)]
    assert data.disk[5:] == [(7.0 + i, 0.0) for i in range(5)]
    assert spans(data, "switchover") == [(12.2, 12.25)]
    assert spans(data, "post-copy") == []
    assert data.title == "web1: hv1 \N{RIGHTWARDS ARROW} hv2, live-mirror, guest frozen 50 ms"
    assert data.since_play is False and data.prediction is None


def test_a_result_without_the_play_start_has_every_phase_but_the_plan():
    """The RAM migration starts at its first sample when QEMU's completion time is missing."""
    data = chart_data(migration_result())
    assert [band.phase for band in data.phases] == \
        ["target start", "disk mirror"] + ["pre-copy"] * 5 + ["switchover", "hand-over"]
    assert spans(data, "target start") == [(0.0, 2.0)]
    assert spans(data, "disk mirror") == [(2.0, 7.0)]
    assert spans(data, "pre-copy") == [(7.0, 8.0), (8.0, 9.0), (9.0, 10.0), (10.0, 11.0), (11.0, 12.2)]
    assert spans(data, "hand-over") == [(12.25, 20.4)]


@pytest.mark.parametrize("missing", ["source_stop_time", "target_resume_time"])
def test_switchover_band_only_when_both_times_are_known(missing):
    data = chart_data(migration_result(**{missing: None, "frozen_ms": None}))
    assert spans(data, "switchover") == []
    assert data.title.endswith("frozen time unknown")


def test_postcopy_band_needs_the_flag_and_a_post_copy_sample():
    result = migration_result()
    statistics = result["statistics"]
    statistics["completed_time"] = STARTED + 12.5  # no wall time: the migration starts at its first sample
    statistics["history"][3]["phase"] = "post-copy"
    statistics["history"][4]["phase"] = "post-copy"
    assert spans(chart_data(result), "post-copy") == []  # no postcopy_started in the statistics
    statistics["postcopy_started"] = True
    data = chart_data(result)
    assert spans(data, "post-copy") == [(10.0, 12.5)]
    assert spans(data, "pre-copy")[-1] == (9.0, 10.0), "pre-copy ends where post-copy starts"
    assert spans(data, "hand-over") == [(12.5, 20.4)], "from the later of completion and resume"
    statistics["postcopy_time_ms"] = 3000.0  # QEMU's own post-copy time wins over the samples
    assert spans(chart_data(result), "post-copy") == [(9.5, 12.5)]
    for sample in statistics["history"]:
        sample["phase"] = "pre-copy"
    del statistics["postcopy_time_ms"]
    assert spans(chart_data(result), "post-copy") == []


def test_relative_sample_times_count_from_the_migration_start():
    result = migration_result()
    statistics = result["statistics"]
    statistics.update(completed_time=STARTED + 12.3, wall_time_s=5.3, mirror_history=[])
    statistics["history"] = [{"t": 0.0, "remaining": 256 * MIB}, {"t": 1.0, "remaining": 128 * MIB}]
    data = chart_data(result)
    assert data.ram == [(7.0, 256.0), (8.0, 128.0)]
    assert spans(data, "target start") == [(0.0, 7.0)], "no mirror: the target start lasts until the migration"
    assert spans(data, "disk mirror") == []


def test_chart_data_of_a_result_without_statistics():
    data = chart_data({"vm": "web1", "finished": FINISHED, "statistics": None})
    assert data.ram == [] and data.disk == [] and data.phases == [] and data.link_rate == []


# -- a sub-second migration sampled at 10 Hz, as the role reports it -----------------------------

PLAY_STARTED = STARTED - 6.0
MIGRATION_STARTED = STARTED + 5.0


def ten_hertz_result():
    """6 s of plan, 2 s of target start, 3 s of disk mirror, then 0.85 s of pre-copy in 3 passes sampled every
    0.1 s (400 MiB/s in the bulk pass, 200 MiB/s after it), the switchover, and 3 s of hand-over."""
    history = []
    for i in range(9):
        passes = 1 if i < 5 else 2 if i < 8 else 3
        sent = 40 * min(i, 5) + 20 * max(i - 5, 0)
        remaining = 200 - sent if passes == 1 else 260 - sent  # 60 MiB dirtied during the bulk pass
        history.append({"t": round(0.1 * i, 3), "phase": "pre-copy", "status": "active", "passes": passes,
                        "remaining": remaining * MIB, "total": 256 * MIB, "transferred": sent * MIB,
                        "mbps": 3355.4, "dirty_rate": 0 if passes == 1 else 16 * MIB, "disk_remaining": 0})
    mirror = [{"t": STARTED + 2 + i, "disk_remaining": (1024 - 512 * i) * MIB, "disk_total": 1024 * MIB}
              for i in range(3)]
    statistics = {"history": history, "mirror_history": mirror, "completed_time": MIGRATION_STARTED + 0.9,
                  "wall_time_s": 0.9, "pre_switchover_time": MIGRATION_STARTED + 0.86,
                  "mirrors_done_time": MIGRATION_STARTED + 0.88, "postcopy_started": False, "downtime_ms": 40}
    return migration_result(
        play_started=PLAY_STARTED, finished=STARTED + 9.0, statistics=statistics,
        source_stop_time=MIGRATION_STARTED + 0.85, target_resume_time=MIGRATION_STARTED + 0.95,
        prediction={"strategy": "precopy", "predicted_total_s": 3.5, "actual_total_s": 3.9, "error_percent": -10.3,
                    "measured_from": STARTED + 2})


def test_every_phase_of_a_live_move_is_a_band_from_the_play_start():
    data = chart_data(ten_hertz_result())
    assert data.since_play is True
    assert data.phases == [
        Band("plan", 0.0, 6.0), Band("target start", 6.0, 8.0), Band("disk mirror", 8.0, 11.0),
        Band("pre-copy", 11.0, 11.5, "pass 1"), Band("pre-copy", 11.5, 11.8, "pass 2"),
        Band("pre-copy", 11.8, 11.85, "pass 3"), Band("switchover", 11.85, 11.95), Band("hand-over", 11.95, 15.0)]
    assert data.ram[0] == (11.0, 200.0) and data.ram[-1] == (11.8, 0.0) and len(data.ram) == 9


def test_the_link_rate_is_ram_sent_per_second_and_the_dirty_rate_is_qemus():
    data = chart_data(ten_hertz_result())
    assert data.link_rate[0] == (11.0, pytest.approx(400.0, rel=1e-3))  # no sample before: QEMU's mbps
    assert [point[0] for point in data.link_rate] == [point[0] for point in data.ram]
    assert [round(rate) for unused_t, rate in data.link_rate[1:]] == [400] * 5 + [200] * 3
    assert [rate for unused_t, rate in data.dirty_rate] == [0.0] * 5 + [16.0] * 4


def test_mirror_sync_samples_carry_no_rates():
    result = ten_hertz_result()
    result["statistics"]["history"].insert(0, {"t": 0.0, "phase": "mirror-sync", "transferred": None,
                                               "dirty_rate": 0, "disk_remaining": 0})
    data = chart_data(result)
    assert len(data.link_rate) == len(data.dirty_rate) == 9


def test_the_predicted_end_is_where_the_measured_time_started_plus_the_prediction():
    data = chart_data(ten_hertz_result())
    assert data.prediction == PredictedEnd(11.5, "predicted end (precopy, 3.5 s, -10.3 % off)")
    older = ten_hertz_result()
    del older["prediction"]["measured_from"]  # a report from before the start was kept: no mark
    assert chart_data(older).prediction is None
    assert chart_data(ten_hertz_result() | {"prediction": None}).prediction is None


def test_a_play_start_after_the_move_start_is_ignored():
    data = chart_data(ten_hertz_result() | {"play_started": STARTED + 1})
    assert data.since_play is False and data.phases[0] == Band("target start", 0.0, 2.0)


# -- the PNG ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("result", [migration_result(), ten_hertz_result()], ids=["1 Hz", "10 Hz"])
def test_render_png_writes_a_png(tmp_path, result):
    path = tmp_path / "chart.png"
    result["statistics"]["postcopy_started"] = True
    result["statistics"]["history"][4]["phase"] = "post-copy"
    render_png(chart_data(result), str(path))
    content = path.read_bytes()
    assert content.startswith(PNG_SIGNATURE) and len(content) > 1000
    assert os.listdir(tmp_path) == ["chart.png"]  # no temporary file left


def test_render_png_without_samples(tmp_path):
    path = tmp_path / "empty.png"
    render_png(chart_data({"vm": "web1", "finished": FINISHED}), str(path))
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_missing_matplotlib_is_chart_unavailable(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ChartUnavailable):
        render_png(chart_data(migration_result()), str(tmp_path / "x.png"))
    warning = ActionModule._chart(migration_result(), str(tmp_path / "x.png"))  # pylint: disable=protected-access
    assert "pip install matplotlib" in warning
    assert os.listdir(tmp_path) == []


def test_a_chart_that_fails_to_draw_is_a_warning(monkeypatch, tmp_path):
    def broken(data, path):
        raise ValueError("bad data")
    monkeypatch.setattr("ansible_collections.livemig.qemu.plugins.action.qemu_migration_report.render_png", broken)
    warning = ActionModule._chart(migration_result(), str(tmp_path / "x.png"))  # pylint: disable=protected-access
    assert warning.startswith("no chart:") and "bad data" in warning


def test_a_failed_report_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = str(tmp_path / "r.json")

    def failing(source, destination):
        assert os.path.getsize(source) == 2  # written in full, then the rename fails
        raise OSError("disk full")
    monkeypatch.setattr(_files.os, "replace", failing)
    with pytest.raises(OSError):
        _files.atomic_write(path, "{}", mode=REPORT_MODE, durable=False)
    assert os.listdir(tmp_path) == []


def test_the_module_stub_says_it_runs_on_the_controller(capsys, tmp_path):
    with patch_module_args({"result": {}, "dest_dir": str(tmp_path)}):
        with pytest.raises(SystemExit):
            qemu_migration_report.main()
    output = json.loads(capsys.readouterr().out)
    assert output["failed"] is True and "runs on the controller" in output["msg"]


# -- the action plugin, driven by ansible-playbook -------------------------------------------------

@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    root = tmp_path_factory.mktemp("collections")
    os.makedirs(root / "ansible_collections" / "livemig")
    os.symlink(REPO, root / "ansible_collections" / "livemig" / "qemu")
    return root


def run_playbook(collections, directory, tasks, pythonpath=None, check=False):
    """Run `tasks` on localhost; return (registered results dumped as JSON, stdout and stderr)."""
    playbook = directory / "play.yml"
    dump = directory / "registered.json"
    names = [task["register"] for task in tasks if "register" in task]
    dumped = "{{ {" + ", ".join(f"'{name}': {name}" for name in names) + "} | to_json }}"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": tasks + [
        {"ansible.builtin.copy": {"content": dumped, "dest": str(dump)}, "check_mode": False}]}]
    playbook.write_text(json.dumps(play))
    config = directory / "ansible.cfg"
    config.write_text("[defaults]\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_CONFIG=str(config), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
            "-c", "local", str(playbook)] + (["--check"] if check else [])
    process = subprocess.run(argv, env=env, cwd=directory, capture_output=True, text=True, timeout=120,
                             check=False)
    assert process.returncode == 0, process.stdout + process.stderr
    return json.loads(dump.read_text()), process.stdout + process.stderr


def report_task(register, result, dest_dir, **extra):
    return {"livemig.qemu.qemu_migration_report": {"result": result, "dest_dir": str(dest_dir), **extra},
            "register": register}


def test_playbook_writes_json_and_png(collections, tmp_path):
    dest = tmp_path / "reports" / "new"
    result = migration_result()
    tasks = [
        report_task("full", result, dest),
        report_task("no_chart", migration_result(vm="db1"), dest, chart=False),
        {**report_task("checked", migration_result(vm="web2"), dest), "check_mode": True},
        {**report_task("bad", migration_result(vm="a/b"), dest), "ignore_errors": True},
    ]
    registered, output = run_playbook(collections, tmp_path, tasks)

    full = registered["full"]
    assert full["changed"] is True
    assert full["json_path"] == str(dest / "web1-1767225620.json")
    assert full["png_path"] == str(dest / "web1-1767225620.png")
    assert json.loads((dest / "web1-1767225620.json").read_text()) == result
    png = (dest / "web1-1767225620.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000

    assert registered["no_chart"]["changed"] is True and registered["no_chart"]["png_path"] is None
    assert (dest / "db1-1767225620.json").exists() and not (dest / "db1-1767225620.png").exists()

    assert registered["checked"]["changed"] is True
    assert registered["checked"]["json_path"] == str(dest / "web2-1767225620.json")
    assert not (dest / "web2-1767225620.json").exists()

    assert registered["bad"]["failed"] is True and "invalid VM name" in registered["bad"]["msg"]
    assert sorted(os.listdir(dest)) == ["db1-1767225620.json", "web1-1767225620.json", "web1-1767225620.png"]
    assert "WARNING" not in output


def test_playbook_without_matplotlib_writes_json_and_warns(collections, tmp_path):
    shim = tmp_path / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named matplotlib (test shim)')\n")
    dest = tmp_path / "reports"
    registered, output = run_playbook(collections, tmp_path, [report_task("report", migration_result(), dest)],
                                      pythonpath=str(tmp_path / "shim"))
    assert registered["report"]["changed"] is True
    assert registered["report"]["png_path"] is None
    assert os.listdir(dest) == ["web1-1767225620.json"]
    assert "[WARNING]" in output and "pip install matplotlib" in " ".join(output.split())
