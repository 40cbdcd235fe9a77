"""The filters are thin: each hands its input to the pure function and turns a bad input into a filter error."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.livemig.qemu.plugins.filter import migration_after_failure, migration_plan, migration_result

FILTERS = {
    migration_plan: ["migration_plan", "migration_request_problem", "migration_link_listener", "migration_needs_kvm"],
    migration_after_failure: ["migration_after_failure"],
    migration_result: ["migration_result", "migration_result_line"],
}


@pytest.mark.parametrize("plugin,names", FILTERS.items(), ids=[plugin.__name__.rsplit(".", 1)[1] for plugin in FILTERS])
def test_each_filter_is_registered(plugin, names):
    assert sorted(plugin.FilterModule().filters()) == sorted(names)


# Each row: id, the call, a fragment of the filter error.
BAD_INPUTS = [
    ("plan of a list", lambda: migration_plan.migration_plan([]), "expects a dict"),
    ("plan without a target", lambda: migration_plan.migration_plan({"vm": "a", "spec": {}, "source": {}}),
     "missing target"),
    ("plan with an empty spec", lambda: migration_plan.migration_plan(
        {"vm": "a", "spec": {}, "source": {"name": "hv1", "facts": {}}, "target": {"name": "hv2", "facts": {}}}),
     "VM a: memory_mb is required"),
    ("plan with broken facts", lambda: migration_plan.migration_plan(
        {"vm": "a", "spec": {"memory_mb": 64, "vcpus": 1, "machine": "q35", "cpu_model": "qemu64"},
         "source": {"name": "hv1", "facts": {}}, "target": {"name": "hv2", "facts": {"machines": [[]]}}}),
     "malformed facts or spec"),
    ("KVM check without facts", lambda: migration_plan.migration_needs_kvm(None, "a", {}), "expects the source's"),
    ("rollback of a string", lambda: migration_after_failure.migration_after_failure("boom", {}, {}, {}, "copy", "m"),
     "expects the failed task's result"),
    ("rollback without a plan's method", lambda: migration_after_failure.migration_after_failure(
        {"msg": "x"}, {"vm": "a"}, {}, {}, "copy", "m"), "malformed plan or facts"),
    ("result of nothing", lambda: migration_result.migration_result(None, {}, 0, 0), "expects the move's"),
    ("result of an unknown method", lambda: migration_result.migration_result({}, {"method": None}, 0, 0),
     "no figures for method None"),
    ("result with broken steps", lambda: migration_result.migration_result(
        {"stopped_at": 1, "resumed_at": 2, "shutdown": {}, "copies": {"results": [{}]}},
        {"family": "cold", "method": "cold"}, 0, 0), "malformed steps or plan"),
    ("line of a list", lambda: migration_result.migration_result_line([]), "expects livemig_result"),
    ("line without a method", lambda: migration_result.migration_result_line({}), "malformed result"),
]


@pytest.mark.parametrize("call,message", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_are_filter_errors(call, message):
    with pytest.raises(AnsibleFilterError) as error:
        call()
    assert message in str(error.value)


def test_request_problem_passes_the_answer_through():
    assert migration_plan.migration_request_problem("web1", {"web1": {}}, "hv1", "hv2", True) == ""
    assert migration_plan.migration_request_problem("web1", {"web1": {}}, "hv1", "hv9", False).endswith(
        "the target is not in the inventory")


def test_needs_kvm_passes_the_answer_through():
    assert migration_plan.migration_needs_kvm({"vms": {"a": {"accel": "kvm"}}}, "a", {}) is True
    assert migration_plan.migration_needs_kvm({"vms": {}}, "a", {"accel": "tcg"}, "cold", True) is False


def test_the_link_listener_options_follow_the_transport_and_need_an_address():
    assert migration_plan.migration_link_listener({}, "hv1", "", "tls", "/etc/livemig/tls") is None
    assert migration_plan.migration_link_listener({}, "hv1", "198.18.0.2", "tcp", "/etc/livemig/tls") == {
        "address": "198.18.0.2"}
    assert migration_plan.migration_link_listener({"tls": None}, "hv1", "198.18.0.2", "tls", "/etc/t") == {
        "address": "198.18.0.2", "tls_dir": "/etc/t", "tls_peer_dn": None}
