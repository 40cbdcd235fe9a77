"""The record of what QEMU's migration stream achieved: the rate from QEMU's final query-migrate answer, link-bound
against host-bound moves, age, corrupt files, the keys (from the capabilities and parameters a move migrates with) and
their file names, and the source's record after a move under the key the probe looks up."""
from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils import _source, _vmmeasure
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._streamcache import (
    CACHE_DIR, MAX_AGE_S, StreamKey, achieved_rate, ceiling, migration_key, recall, record, stream_key)

MB = 1e6
NOW = 1_750_000_000.0
DAY = 86400
# Final query-migrate answers recorded on this machine from QEMU 10.0.2 (loopback, TCG, 256 MiB of random RAM, no
# bandwidth cap, QEMU's 300 ms downtime limit). Fields as qapi/migration.json's MigrationInfo and MigrationStats.
# A single stream: QEMU stopped the guest with 96 MB left, which it sent during the 274 ms downtime.
QEMU_10_SINGLE = {
    "status": "completed", "setup-time": 0, "downtime": 274, "total-time": 772,
    "ram": {"total": 268967936, "postcopy-requests": 0, "dirty-sync-count": 3, "multifd-bytes": 0,
            "pages-per-second": 85551, "downtime-bytes": 96233211, "page-size": 4096, "remaining": 0,
            "postcopy-bytes": 0, "mbps": 2789.7420932642485, "transferred": 269210112,
            "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 172864660, "duplicate": 282, "dirty-pages-rate": 0,
            "normal-bytes": 268570624, "normal": 65569}}
# Two multifd channels: the pages went through them (multifd-bytes), the main channel carried 112 kB.
QEMU_10_MULTIFD = {
    "status": "completed", "setup-time": 5, "downtime": 7, "total-time": 115,
    "ram": {"total": 268967936, "postcopy-requests": 0, "dirty-sync-count": 3, "multifd-bytes": 268529536,
            "pages-per-second": 594542, "downtime-bytes": 0, "page-size": 4096, "remaining": 0, "postcopy-bytes": 0,
            "mbps": 19537.5816, "transferred": 268641747, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 16,
            "duplicate": 282, "dirty-pages-rate": 0, "normal-bytes": 267825152, "normal": 65387}}
KEY = stream_key("198.18.0.2", "tls")
MULTIFD = ["multifd"]


# -- the rate from query-migrate --------------------------------------------------------------------------------

def test_a_single_streams_rate_leaves_out_the_downtime_and_what_it_sent():
    rate = achieved_rate(QEMU_10_SINGLE)
    assert rate == pytest.approx((269210112 - 96233211) / 0.498)
    # QEMU's own figure for the same stream (megabits/s over its last iteration) agrees within 1 %
    assert rate == pytest.approx(QEMU_10_SINGLE["ram"]["mbps"] * 1e6 / 8, rel=0.01)
    # counting the downtime's bytes over the time the guest ran would have claimed 540 MB/s
    assert rate < 400 * MB


def test_multifd_bytes_are_counted_once():
    rate = achieved_rate(QEMU_10_MULTIFD)
    # transferred already holds multifd-bytes: main channel + channels, over 115 - 5 - 7 ms
    assert rate == pytest.approx(268641747 / 0.103)
    assert rate < (268641747 + 268529536) / 0.103 * 0.6


@pytest.mark.parametrize("change", [
    {"status": "active"}, {"status": "failed"}, {"total-time": None}, {"downtime": "274"}, {"setup-time": -1},
    {"ram": None}, {"ram": {"transferred": 269210112}},  # no downtime-bytes (QEMU before 7.0)
    {"downtime": 772},  # no time left while the guest ran
    {"total-time": 300, "downtime": 250},  # 50 ms: the start-up, not the stream
    {"ram": {**QEMU_10_SINGLE["ram"], "downtime-bytes": 269210112}},  # nothing sent while it ran
    {"ram": {**QEMU_10_SINGLE["ram"], "transferred": True}}])
def test_missing_or_silly_figures_give_no_rate(change):
    assert achieved_rate({**QEMU_10_SINGLE, **change}) is None
    assert achieved_rate(None) is None and achieved_rate({}) is None


# -- record and recall ----------------------------------------------------------------------------------------------

def test_a_host_bound_stream_is_the_ceiling(tmp_path):
    entry = record(str(tmp_path), KEY, 210 * MB, 1200 * MB, "web1-1", NOW)
    assert entry == {"stream_rate": 210000000, "bound": "host", "link_rate": 1200000000, "cap": 0,
                     "migration_id": "web1-1", "when": NOW}
    assert recall(str(tmp_path), KEY, now=NOW + 60) == entry
    assert ceiling(entry) == 210 * MB


def test_a_link_bound_stream_sets_no_ceiling(tmp_path):
    # 1 Gbit/s link: the stream reached 95 % of what the link test measured
    entry = record(str(tmp_path), KEY, 111 * MB, 117 * MB, "web1-2", NOW)
    assert entry["bound"] == "link"
    assert recall(str(tmp_path), KEY, now=NOW) == entry and ceiling(entry) is None
    assert record(str(tmp_path), KEY, 0.84 * 117 * MB, 117 * MB, "web1-3", NOW)["bound"] == "host"


def test_a_capped_stream_is_bound_by_the_cap(tmp_path):
    entry = record(str(tmp_path), KEY, 60 * MB, 1200 * MB, "web1-4", NOW, cap=64 * MB)
    assert entry["bound"] == "cap" and entry["cap"] == 64000000 and ceiling(entry) is None


def test_a_limited_move_keeps_the_ceiling_unless_it_went_faster(tmp_path):
    run_dir = str(tmp_path)
    host = record(run_dir, KEY, 210 * MB, 1200 * MB, "unlimited", NOW)
    record(run_dir, KEY, 112 * MB, 117 * MB, "1gbit", NOW + 10)
    assert recall(run_dir, KEY, now=NOW + 20) == host, "a slow link says nothing about the host"
    faster = record(run_dir, KEY, 300 * MB, 320 * MB, "faster", NOW + 30)
    assert recall(run_dir, KEY, now=NOW + 40) == faster and ceiling(faster) is None, "the ceiling did not hold"
    lower = record(run_dir, KEY, 180 * MB, 1200 * MB, "lower", NOW + 50)
    assert recall(run_dir, KEY, now=NOW + 60) == lower, "the last host-bound stream replaces the ceiling"


def test_entries_older_than_30_days_are_ignored(tmp_path):
    run_dir = str(tmp_path)
    host = record(run_dir, KEY, 210 * MB, 1200 * MB, "old", NOW)
    assert recall(run_dir, KEY, now=NOW + MAX_AGE_S) == host
    assert recall(run_dir, KEY, now=NOW + MAX_AGE_S + 1) is None
    limited = record(run_dir, KEY, 112 * MB, 117 * MB, "recent", NOW + 29 * DAY)
    assert recall(run_dir, KEY, now=NOW + 31 * DAY) == limited, "past the ceiling's age, the last move shows"


def test_nothing_is_kept_without_a_rate_or_a_link_rate_to_judge_it(tmp_path):
    for stream, link in ((None, 1200 * MB), (0, 1200 * MB), (210 * MB, None), (210 * MB, 0)):
        assert record(str(tmp_path), KEY, stream, link, "m", NOW) is None
    assert not os.path.exists(tmp_path / CACHE_DIR)
    assert record("", KEY, 210 * MB, 1200 * MB, "m", NOW) is None and recall(None, KEY) is None
    assert record(str(tmp_path), None, 210 * MB, 1200 * MB, "m", NOW) is None, "no stream to key it by"
    assert not os.path.exists(tmp_path / CACHE_DIR)


def test_the_file_is_private_and_written_whole(tmp_path):
    record(str(tmp_path), KEY, 210 * MB, 1200 * MB, "web1-1", NOW)
    directory = tmp_path / CACHE_DIR
    (name,) = os.listdir(directory)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(directory / name).st_mode) == 0o600
    content = json.loads((directory / name).read_text(encoding="utf-8"))
    assert content["key"] == {"address": "198.18.0.2", "transport": "tls", "multifd_channels": 0,
                              "multifd_compression": "none"}
    assert content["ceiling"] == content["last"]


@pytest.mark.parametrize("corrupt", ["{not json", "[]", '{"format": 1}', "", '{"format": 99, "ceiling": {}}'])
def test_a_corrupt_file_is_ignored_then_replaced(tmp_path, corrupt):
    record(str(tmp_path), KEY, 210 * MB, 1200 * MB, "first", NOW)
    (path,) = (tmp_path / CACHE_DIR).iterdir()
    path.write_text(corrupt, encoding="utf-8")
    assert recall(str(tmp_path), KEY, now=NOW) is None
    replaced = record(str(tmp_path), KEY, 112 * MB, 117 * MB, "second", NOW)
    assert recall(str(tmp_path), KEY, now=NOW) == replaced


def test_an_unwritable_cache_costs_the_entry_not_the_move(tmp_path):
    (tmp_path / CACHE_DIR).write_text("a file where the directory goes", encoding="utf-8")
    assert record(str(tmp_path), KEY, 210 * MB, 1200 * MB, "m", NOW) is None
    assert recall(str(tmp_path), KEY, now=NOW) is None


# -- keys -----------------------------------------------------------------------------------------------------------

def test_each_part_of_the_key_selects_its_own_entry(tmp_path):
    keys = [KEY, stream_key("198.18.0.2", "tcp"), stream_key("198.18.0.3", "tls"),
            stream_key("198.18.0.2", "tls", MULTIFD, {"multifd-channels": 4}),
            stream_key("198.18.0.2", "tls", MULTIFD, {"multifd-channels": 4, "multifd-compression": "zstd"})]
    for number, key in enumerate(keys):
        record(str(tmp_path), key, (100 + number) * MB, 1200 * MB, f"m{number}", NOW)
    assert len(os.listdir(tmp_path / CACHE_DIR)) == len(keys)
    assert [recall(str(tmp_path), key, now=NOW)["migration_id"] for key in keys] == [f"m{n}" for n in range(5)]


def test_keys_are_normalised_and_their_file_names_safe_and_distinct():
    assert stream_key("[FD00::0002]", "tcp") == stream_key("fd00::2", "tcp") == StreamKey("fd00::2", "tcp", 0, "none")
    hostile = stream_key("../../etc/passwd", "tcp", MULTIFD, {"multifd-compression": "z/../std"})
    assert "/" not in hostile.file_name() and not hostile.file_name().startswith(".")
    assert hostile.file_name().endswith(".json")
    # two hosts that sanitise alike still get files of their own
    assert stream_key("a_b", "tcp").file_name() != stream_key("a:b", "tcp").file_name()
    assert stream_key("fd00::2", "tls").file_name().startswith("fd00_2-tls-0-none-")
    assert KEY.file_name().startswith("198_18_0_2-tls-0-none-")


@pytest.mark.parametrize("capabilities, parameters, key", [
    ([], {}, StreamKey("198.18.0.2", "tls", 0, "none")),
    (["postcopy-ram"], {"multifd-channels": 8, "multifd-compression": "zstd"},
     StreamKey("198.18.0.2", "tls", 0, "none")),  # without multifd its parameters do not apply
    (MULTIFD, {}, StreamKey("198.18.0.2", "tls", 2, "none")),  # QEMU's default of 2 channels
    (MULTIFD, {"multifd-compression": " ZSTD "}, StreamKey("198.18.0.2", "tls", 2, "zstd")),
    (MULTIFD, {"multifd-channels": 4}, StreamKey("198.18.0.2", "tls", 4, "none")),
    (MULTIFD, {"multifd-channels": "4"}, StreamKey("198.18.0.2", "tls", 4, "none")),  # templated into a string
    (["xbzrle", "multifd"], {"multifd-channels": 8, "max-cpu-throttle": 99}, StreamKey("198.18.0.2", "tls", 8, "none")),
])
def test_the_key_comes_from_the_capabilities_and_parameters(capabilities, parameters, key):
    assert stream_key("198.18.0.2", "tls", capabilities, parameters) == key


@pytest.mark.parametrize("args, refusal", [
    (("", "tls"), "needs the target's migration address"),
    (("198.18.0.2", "rdma"), "transport must be one of tls, tcp"),
    (("198.18.0.2", "tls", MULTIFD, {"multifd-channels": 0}), "parameters multifd-channels must be a whole number"),
    (("198.18.0.2", "tls", MULTIFD, {"multifd-channels": True}), "parameters multifd-channels must be a whole number"),
    (("198.18.0.2", "tls", MULTIFD, {"multifd-channels": "four"}), "parameters multifd-channels must be a whole"),
    (("198.18.0.2", "tls", MULTIFD, {"multifd-compression": " "}), "parameters multifd-compression must be a name"),
    (("198.18.0.2", "tls", MULTIFD, {"multifd-compression": 3}), "parameters multifd-compression must be a name"),
])
def test_bad_key_parts_are_refused(args, refusal):
    with pytest.raises(ValueError, match=refusal):
        stream_key(*args)


def test_the_key_of_a_migration():
    assert migration_key("tcp:198.18.0.2:4444", True, [], {}) == KEY
    assert migration_key("tcp:[fd00::2]:4444", False, MULTIFD, {"multifd-channels": 4}) == \
        StreamKey("fd00::2", "tcp", 4, "none")
    assert migration_key("exec:cat > state", False, [], {}) is None
    assert migration_key("unix:/run/livemig/vm1.migrate", False, [], {}) is None


def probe_params(**params):
    """qemu_migration_probe's options that select the stream, as its argument spec defaults them."""
    return {"peer_address": "198.18.0.2", "transport": None, "tls_dir": None, "capabilities": [], "parameters": {},
            **params}


def test_the_probe_refuses_bad_parameters_with_the_option_named():
    with pytest.raises(LivemigError, match="parameters multifd-channels must be a whole number of at least 1, got "
                                           "'two'"):
        _vmmeasure.peer_stream_key(probe_params(capabilities=MULTIFD, parameters={"multifd-channels": "two"}))


# -- the source's record after a move (qemu_migrate) ---------------------------------------------------------------

def a_move(tmp_path, **params):
    return SimpleNamespace(paths=SimpleNamespace(run_dir=str(tmp_path)), params={
        "uri": "tcp:198.18.0.2:49152", "capabilities": [], "parameters": {}, "link_rate": 1e9, "max_bandwidth": 0,
        **params})


def test_a_completed_move_keeps_its_streams_rate_under_the_key_the_probe_looks_up(tmp_path):
    _source.remember_stream_rate(a_move(tmp_path), {"query_migrate": QEMU_10_SINGLE, "recoveries": []}, "move-1",
                                 tls=True)
    kept = recall(str(tmp_path), KEY)
    assert kept["migration_id"] == "move-1" and kept["bound"] == "host" and ceiling(kept) > 0, kept
    assert recall(str(tmp_path), stream_key("198.18.0.2", "tcp")) is None, "a TLS stream says nothing about tcp"


def test_a_recovered_postcopy_or_a_move_without_a_link_figure_keeps_nothing(tmp_path):
    _source.remember_stream_rate(a_move(tmp_path), {"query_migrate": QEMU_10_SINGLE, "recoveries": [{"attempts": 2}]},
                                 "move-1", tls=True)
    _source.remember_stream_rate(a_move(tmp_path, link_rate=None), {"query_migrate": QEMU_10_SINGLE}, "move-2",
                                 tls=True)
    assert recall(str(tmp_path), KEY) is None


def test_the_probe_finds_a_multifd_move_without_multifd_channels_under_qemus_default_of_2(tmp_path):
    """The plan's parameters name no multifd-channels when the user leaves them to QEMU: qemu_migrate records the
    move with 2 channels, and the probe given the same capabilities and parameters looks up that key."""
    _source.remember_stream_rate(a_move(tmp_path, capabilities=MULTIFD), {"query_migrate": QEMU_10_MULTIFD},
                                 "move-1", tls=False)
    looked_up = _vmmeasure.peer_stream_key(probe_params(capabilities=MULTIFD))
    assert looked_up == StreamKey("198.18.0.2", "tcp", 2, "none")
    assert recall(str(tmp_path), looked_up)["migration_id"] == "move-1"
    assert recall(str(tmp_path), _vmmeasure.peer_stream_key(probe_params())) is None, "a single stream is another key"
