from __future__ import annotations

import json
import os
import random
import re

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._convergence import (
    MIB, Abort, ConvergencePolicy, ConvergenceSettings, SetParameters, StartPostcopy, completion_timeout,
    make_policy)
from ansible_collections.livemig.qemu.plugins.module_utils._progress import sample

HISTORIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "histories")
RECORDED = ("converging", "stalled", "oscillating", "stalled-auto-converge", "auto-converge-live")


# -- helpers ---------------------------------------------------------------------------------

def load(name):
    with open(os.path.join(HISTORIES, f"{name}.json"), encoding="utf-8") as handle:
        return json.load(handle)


def samples(name):
    """The recorded query-migrate answers, turned into history points by the state machine's own sample()."""
    return [sample(point["query-migrate"], point["t"]) for point in load(name)["history"]]


def replay(points, policy):
    """(t, action) for every action the policy returns over the points."""
    return [(point["t"], action) for point in points for action in policy.observe(point)]


def downtimes(actions):
    return [action.parameters["downtime-limit"] for unused_t, action in actions
            if isinstance(action, SetParameters) and "downtime-limit" in action.parameters]


def kinds(actions):
    """A compact view of the escalation: 'downtime', 'max-cpu-throttle', 'increment', 'postcopy', 'abort'."""
    names = {"downtime-limit": "downtime", "max-cpu-throttle": "max-cpu-throttle",
             "cpu-throttle-increment": "increment"}
    return [names[next(iter(action.parameters))] if isinstance(action, SetParameters)
            else "postcopy" if isinstance(action, StartPostcopy) else "abort" for unused_t, action in actions]


def stall(seconds=120, pass_s=2.0, size=40 * MIB, link=20 * MIB, dirty=25 * MIB, throttle=lambda t: 0,
          noise=0.0, shrink=1.0, seed=1, step=1.0):
    """A synthetic history, one point every `step` seconds: a bulk pass until 4 s, then passes of pass_s seconds
    that each start at `size` (times `shrink` per pass) and drain at the link rate; values jittered by +-noise."""
    jitter = random.Random(seed)
    points, sent = [], 0
    for tick in range(1, round(seconds / step) + 1):
        second = round(tick * step, 3)
        wobble = 1 + jitter.uniform(-noise, noise)
        sent += link * wobble * step
        if second < 4:
            passes, remaining, rate = 1, 128 * MIB - sent, 0
        else:
            done = int((second - 4) // pass_s)
            into = (second - 4) - done * pass_s
            start = size * shrink ** done
            passes, remaining, rate = 2 + done, max(0, start - into * link) * wobble, dirty * wobble
        points.append({"t": float(second), "status": "active", "remaining": int(remaining), "transferred": int(sent),
                       "mbps": link * 8 / 1e6, "dirty_rate": int(rate), "passes": passes,
                       "throttle": throttle(second)})
    return points


# -- recorded histories ------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [{}, {"max_downtime_ms": 2000}, {"auto_converge": True, "postcopy": True}])
def test_a_converging_history_needs_no_action(settings):
    policy = make_policy("auto", **settings)
    assert replay(samples("converging"), policy) == []
    assert load("converging")["final_status"] == "completed"


def test_a_stalled_history_raises_the_downtime_then_aborts_with_the_rates():
    actions = replay(samples("stalled"), make_policy("auto", max_downtime_ms=300))
    assert kinds(actions) == ["downtime", "downtime", "abort"]
    assert downtimes(actions) == [200, 300]
    assert actions[0][0] >= 10  # not before pass 1 (3 s) and three passes without progress
    assert isinstance(actions[-1][1], Abort)
    message = actions[-1][1].message
    match = re.match(r"pre-copy cannot converge: the guest dirties (\d+\.\d) MiB/s, the link carries (\d+\.\d) MiB/s",
                     message)
    assert match and 18 < float(match[1]) < 21 and 19 < float(match[2]) < 21  # the recording's link cap is 20 MiB/s
    assert message.endswith("allow post-copy or raise livemig_max_downtime_ms")
    assert "downtime limit 300 ms" in message


def test_a_stalled_history_switches_to_postcopy_when_allowed_and_then_stays_quiet():
    """Pass 3 is as large as pass 2 (20 MiB, a second at the link rate, more than 300 ms): post-copy at once, on the
    first sample of pass 4, instead of two downtime steps and three more passes."""
    policy = make_policy("auto", max_downtime_ms=300, postcopy=True)
    actions = replay(samples("stalled"), policy)
    assert kinds(actions) == ["postcopy"]
    assert actions[0][0] == 6.001 and "pass 3 (20." in actions[0][1].reason
    assert "is not clearly smaller than pass 2" in actions[0][1].reason
    assert policy.done and policy.observe({**samples("stalled")[-1], "t": 99.0}) == []


def test_an_oscillating_history_is_a_stall():
    actions = replay(samples("oscillating"), make_policy("auto", max_downtime_ms=300))
    assert kinds(actions) == ["downtime", "downtime", "abort"]
    assert actions[-1][0] <= 20


def test_throttling_is_exhausted_at_max_cpu_throttle():
    # Recorded with auto-converge on and max-cpu-throttle set to 80 mid-migration: the guest stays stalled at 80 %.
    # The recording is short, so the grace at the ceiling is too.
    policy = make_policy("auto", max_downtime_ms=300, auto_converge=True, max_cpu_throttle=80,
                         ceiling_grace_seconds=5)
    actions = replay(samples("stalled-auto-converge"), policy)
    assert kinds(actions) == ["downtime", "downtime", "max-cpu-throttle", "abort"]
    assert actions[2][1].parameters == {"max-cpu-throttle": 80}
    assert "cpu throttle 80%" in actions[-1][1].message


def test_the_live_auto_converge_run_replays_to_the_same_decisions():
    record = load("auto-converge-live")
    policy = make_policy("auto", max_downtime_ms=300, auto_converge=True)
    assert policy.initial_parameters() == {"downtime-limit": 100, "max-cpu-throttle": 20}
    actions = replay(samples("auto-converge-live"), policy)
    assert [{"t": t, "action": type(action).__name__, "parameters": action.parameters} for t, action in actions] \
        == record["actions"]
    assert record["final_status"] == "completed"


@pytest.mark.parametrize("name", RECORDED)
def test_the_defaults_policy_never_acts(name):
    policy = make_policy("defaults", max_downtime_ms=300, auto_converge=True, postcopy=True)
    assert policy.initial_parameters() == {}
    assert replay(samples(name), policy) == []


def test_postcopy_early_starts_postcopy_once_after_the_first_pass():
    points = samples("converging")
    actions = replay(points, make_policy("postcopy-early", postcopy=True))
    first_after_bulk = next(point["t"] for point in points if (point["passes"] or 0) >= 2)
    assert [(t, type(action)) for t, action in actions] == [(first_after_bulk, StartPostcopy)]


# -- edge cases --------------------------------------------------------------------------------

def test_the_first_pass_is_never_a_stall():
    bulk = [point for point in samples("stalled") if point["passes"] == 1]
    slow_bulk = [{"t": float(t), "status": "active", "remaining": 100 * MIB + (t % 3) * MIB, "transferred": t * MIB,
                  "mbps": 8.4, "dirty_rate": 50 * MIB, "passes": 1, "throttle": 0} for t in range(1, 300)]
    assert bulk and replay(bulk + slow_bulk, make_policy("auto", postcopy=True)) == []


@pytest.mark.parametrize("target", [50, 100, 150, 300, 1000, 2500])
@pytest.mark.parametrize("postcopy", [False, True])
def test_the_downtime_limit_never_exceeds_the_target(target, postcopy):
    for points in (samples("stalled"), samples("oscillating"), stall()):
        policy = make_policy("auto", max_downtime_ms=target, auto_converge=True, postcopy=postcopy)
        values = [policy.initial_parameters()["downtime-limit"]] + downtimes(replay(points, policy))
        assert values[0] == min(100, target)
        assert values == sorted(set(values)) and max(values) <= target
    if not postcopy:
        assert values[-1] == target  # the long synthetic stall reaches the target every time
    else:  # only when the last pass (40 MiB at 20 MiB/s) fits in it; post-copy otherwise
        assert values[1:] == ([target] if target >= 2000 else [])


def test_escalation_goes_downtime_then_throttle_then_abort_without_postcopy():
    policy = make_policy("auto", max_downtime_ms=500, auto_converge=True)
    actions = replay(stall(throttle=lambda t: 20 if t < 40 else 30), policy)
    assert kinds(actions) == ["downtime"] * 3 + ["max-cpu-throttle", "increment", "increment", "abort"]
    assert downtimes(actions) == [200, 400, 500]
    increments = [action.parameters for unused_t, action in actions[4:6]]
    assert increments == [{"cpu-throttle-increment": 20}, {"cpu-throttle-increment": 40}]
    assert [t for t, unused_action in actions] == sorted(t for t, unused_action in actions)


TIME_SCALES = {
    "downtime, throttle, abort": ({"throttle": lambda t: 20 if t < 40 else 30},
                                  {"max_downtime_ms": 500, "auto_converge": True}),
    "post-copy after pass 2": ({}, {"max_downtime_ms": 500, "auto_converge": True, "postcopy": True}),
    "downtime to the target, then post-copy": ({"dirty": 15 * MIB}, {"max_downtime_ms": 2500, "postcopy": True}),
    "a throttle at the ceiling": ({"throttle": lambda t: min(99, 20 + max(0, t - 10) * 4)},
                                  {"max_downtime_ms": 100, "auto_converge": True}),
    "passes a little smaller": ({"shrink": 0.97, "dirty": 15 * MIB}, {"max_downtime_ms": 300}),
    "the rate rule": ({"dirty": 30 * MIB, "shrink": 0.85}, {"max_downtime_ms": 100}),
    "settling": ({"seconds": 60}, {"max_downtime_ms": 100000}),
}


@pytest.mark.parametrize("history, settings", TIME_SCALES.values(), ids=TIME_SCALES.keys())
def test_ten_samples_a_second_decide_as_one_a_second_did(history, settings):
    """The state machine samples every 0.1 s: the policy judges by the samples' times and passes, not by how many
    came, so the same migration gets the same actions at the same moments."""
    once = replay(stall(**history), make_policy("auto", **settings))
    ten_times = replay(stall(step=0.1, **history), make_policy("auto", **settings))
    assert kinds(once) and kinds(ten_times) == kinds(once)
    assert [t for t, unused_action in ten_times] == [t for t, unused_action in once]


# -- post-copy allowed: judged early, never throttled ----------------------------------------------

def test_with_postcopy_allowed_a_guest_dirtying_faster_than_the_link_goes_postcopy_after_pass_2():
    """The same stall as above: no downtime steps, no throttle, post-copy on the first sample after pass 2."""
    points = stall(throttle=lambda t: 20 if t < 40 else 30)
    policy = make_policy("auto", max_downtime_ms=500, auto_converge=True, postcopy=True)
    actions = replay(points, policy)
    assert kinds(actions) == ["postcopy"]
    pass_3 = next(point["t"] for point in points if point["passes"] == 3)
    assert actions[0][0] == pass_3
    assert actions[0][1].reason.startswith("after pass 2 the dirty rate 25.0 MiB/s >= link rate 20.0 MiB/s")


def test_with_postcopy_allowed_the_downtime_goes_to_the_target_once_when_the_last_pass_fits_in_it():
    """Pass 3 is no smaller than pass 2, but 40 MiB at 20 MiB/s fit in 2500 ms: the limit goes there at once; the
    stall that follows (a larger limit changes nothing in a synthetic history) ends in post-copy, never in a
    throttle."""
    policy = make_policy("auto", max_downtime_ms=2500, auto_converge=True, postcopy=True)
    actions = replay(stall(dirty=15 * MIB), policy)
    assert kinds(actions) == ["downtime", "postcopy"]
    assert actions[0][1].parameters == {"downtime-limit": 2500}
    assert "is not clearly smaller than pass 2" in actions[0][1].reason
    assert "the last pass (40.0 MiB at 20.0 MiB/s) fits in 2500 ms" in actions[0][1].reason


def test_with_postcopy_allowed_a_converging_migration_is_left_alone():
    """Passes 20 % smaller each time, the guest dirtying less than the link carries: nothing to do."""
    converging = stall(size=60 * MIB, dirty=12 * MIB, shrink=0.8, seconds=40)
    assert replay(converging, make_policy("auto", max_downtime_ms=300, auto_converge=True, postcopy=True)) == []


def test_with_postcopy_allowed_a_late_stall_still_ends_in_postcopy_without_throttling():
    """Passes that shrink at first (the early passes pass) and then stop shrinking: the usual stall rule, and then
    post-copy rather than auto-converge."""
    points = stall(size=40 * MIB, dirty=15 * MIB, shrink=0.8, seconds=12) + [
        {**point, "t": point["t"] + 12, "passes": point["passes"] + 4}
        for point in stall(size=16 * MIB, dirty=15 * MIB, seconds=60)[4:]]
    actions = replay(points, make_policy("auto", max_downtime_ms=300, auto_converge=True, postcopy=True))
    assert kinds(actions) == ["postcopy"]
    assert actions[0][0] > 16 and "no pass below" in actions[0][1].reason


def test_the_policy_waits_while_qemu_raises_the_throttle():
    policy = make_policy("auto", max_downtime_ms=100, auto_converge=True)
    actions = replay(stall(throttle=lambda t: min(99, max(0, t - 10) * 3)), policy)
    assert kinds(actions) == ["max-cpu-throttle", "abort"]  # no increment: QEMU kept raising it up to 99
    assert "cpu throttle 99%" in actions[-1][1].message


def test_a_throttle_that_just_reached_the_ceiling_gets_time_to_work():
    # Under TCG an 80 % throttle still leaves a guest enough CPU to dirty 128 MiB/s: the last step counts.
    policy = make_policy("auto", max_downtime_ms=100, auto_converge=True)
    actions = replay(stall(throttle=lambda t: min(99, 20 + max(0, t - 10) * 4)), policy)  # 99 % from t=30
    assert kinds(actions) == ["max-cpu-throttle", "abort"]
    assert actions[-1][0] >= 30 + policy.settings.ceiling_grace_seconds


def test_noise_on_a_converging_migration_is_no_stall():
    converging = stall(size=60 * MIB, dirty=12 * MIB, shrink=0.8, noise=0.05, seconds=40)
    assert replay(converging, make_policy("auto", max_downtime_ms=300)) == []
    stalled = stall(noise=0.05, seed=7)
    assert kinds(replay(stalled, make_policy("auto", max_downtime_ms=300))) == ["downtime", "downtime", "abort"]


def test_passes_a_little_smaller_each_time_are_no_progress():
    """3 % smaller per pass, below the 10 % margin, with the guest dirtying less than the link carries."""
    actions = replay(stall(shrink=0.97, dirty=15 * MIB), make_policy("auto", max_downtime_ms=300))
    assert kinds(actions) == ["downtime", "downtime", "abort"]
    assert "no pass below" in actions[0][1].reason


def test_the_rate_rule_alone_finds_a_stall():
    """Passes shrinking now and then by more than the margin, while the guest dirties more than the link carries."""
    policy = make_policy("auto", max_downtime_ms=100)
    points = stall(dirty=30 * MIB, shrink=0.85)
    actions = replay(points, policy)
    assert kinds(actions) == ["abort"]
    assert "dirty rate 30.0 MiB/s >= link rate 20.0 MiB/s" in actions[0][1].message


@pytest.mark.parametrize("status", ["setup", "pre-switchover", "device", "postcopy-active", "completed", None])
def test_only_an_active_migration_is_judged(status):
    points = [{**point, "status": status} for point in stall()]
    assert replay(points, make_policy("auto", postcopy=True)) == []


def test_after_an_action_the_policy_lets_qemu_settle():
    """At least settle_seconds and one more pass (QEMU applies a new downtime limit at the end of a pass)."""
    actions = replay(stall(seconds=60), make_policy("auto", max_downtime_ms=100000))
    gaps = [later - earlier for (earlier, unused_first), (later, unused_second) in zip(actions, actions[1:])]
    assert gaps and min(gaps) >= ConvergenceSettings().settle_seconds
    points = stall(seconds=120, pass_s=10, size=200 * MIB)
    passes = {point["t"]: point["passes"] for point in points}
    actions = replay(points, make_policy("auto", max_downtime_ms=100000))
    steps = [passes[t] for t, unused_action in actions]
    assert len(steps) > 2 and steps == sorted(set(steps))


def test_initial_parameters():
    assert make_policy("auto", max_downtime_ms=50).initial_parameters() == {"downtime-limit": 50}
    assert make_policy("auto", max_downtime_ms=2000).initial_parameters() == {"downtime-limit": 100}
    held = make_policy("auto", auto_converge=True, cpu_throttle_initial=30)
    assert held.initial_parameters() == {"downtime-limit": 100, "max-cpu-throttle": 30}
    low_ceiling = make_policy("auto", auto_converge=True, max_cpu_throttle=20)  # nothing to hold back, nor to allow
    assert low_ceiling.initial_parameters() == {"downtime-limit": 100}
    actions = replay(stall(), ConvergencePolicy(ConvergenceSettings(max_downtime_ms=100, auto_converge=True,
                                                                    max_cpu_throttle=20)))
    assert kinds(actions) == ["increment", "increment", "abort"]


def test_make_policy_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="postcopy-ram"):
        make_policy("postcopy-early")
    with pytest.raises(ValueError, match="unknown convergence policy 'fast'"):
        make_policy("fast")


def test_completion_timeout_scales_with_ram_and_disk():
    assert completion_timeout(0) == 60
    assert completion_timeout(1 << 30, 3 << 30) == pytest.approx(60 + 4096 / 16)
    assert completion_timeout(1 << 40, 1 << 40, absolute_s=3600) == 3600
    assert completion_timeout(1 << 30, base_s=0, min_rate=100 * MIB) == pytest.approx(10.24)
