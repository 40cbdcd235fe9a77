"""The plan's transport: TLS unless tcp is asked for; the filter compares both hosts' TLS directories, and a move
whose streams cannot be TLS is refused, naming why and the fix."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from test_negotiate import request
from tls_helpers import issue, lay_out

from ansible_collections.livemig.qemu.plugins.filter.migration_plan import migration_plan
from ansible_collections.livemig.qemu.plugins.module_utils import _tlsfiles


def checked(tmp_path, source_tls=None, target_tls=None, **wishes):
    """A request as plan.yml builds it: the filter, not the test, compares the hosts' TLS results."""
    built = request(wishes=wishes)
    del built["tls_check"]
    built["host_checks"] = {"source": {"problems": [], **({"tls": source_tls} if source_tls else {})},
                            "target": {"problems": [], **({"tls": target_tls} if target_tls else {})}}
    return migration_plan(built)


def host_dirs(tmp_path, target_ips=("198.18.0.102",)):
    ca = tmp_path / "ca"
    return (_tlsfiles.inspect(lay_out(issue(ca, "hv1", ips=("198.18.0.101",)), tmp_path / "hv1")),
            _tlsfiles.inspect(lay_out(issue(ca, "hv2", ips=target_ips), tmp_path / "hv2")))


def test_tls_without_the_hosts_tls_facts_refuses(tmp_path):
    plan = checked(tmp_path)
    assert plan["transport"] == "tls" and plan["method"] == "live-mirror"
    situation = plan["situation"]
    assert situation["kind"] == "refuse" and situation["show_plan"] is True
    assert "hv1: no TLS directory was reported" in situation["message"]
    assert "hv2: no TLS directory was reported" in situation["message"]
    assert "run livemig.qemu.certificates, or livemig_transport: tcp to move in cleartext" in situation["message"]
    assert any(line.startswith("  transport: tls, not ready") for line in plan["summary"])


def test_tls_with_matching_certificates_plans_the_names_qemu_needs(tmp_path):
    source_tls, target_tls = host_dirs(tmp_path)
    plan = checked(tmp_path, source_tls, target_tls)
    assert plan["situation"]["kind"] == "start"
    assert plan["tls"] == {"source_dir": str(tmp_path / "hv1"), "target_dir": str(tmp_path / "hv2"),
                           "source_dn": "CN=hv1", "target_dn": "CN=hv2", "hostname": "198.18.0.102", "problems": []}
    assert "  transport: tls (source DN CN=hv1, target DN CN=hv2, target certificate names 198.18.0.102)" \
        in plan["summary"]


def test_a_target_certificate_without_the_migration_address_refuses(tmp_path):
    source_tls, target_tls = host_dirs(tmp_path, target_ips=("198.18.0.9",))
    situation = checked(tmp_path, source_tls, target_tls)["situation"]
    assert situation["kind"] == "refuse" and "does not name the migration address 198.18.0.102" in situation["message"]


def test_tcp_is_cleartext_asked_for(tmp_path):
    plan = checked(tmp_path, transport="tcp")
    assert plan["situation"]["kind"] == "start" and plan["transport"] == "tcp"
    assert "  transport: tcp (cleartext, asked for)" in plan["summary"]
    assert plan["tls"] == {"source_dir": None, "target_dir": None, "source_dn": None, "target_dn": None,
                           "hostname": None, "problems": []}


def test_a_cold_move_that_copies_nothing_needs_no_tls(tmp_path):
    built = request(disks=[], wishes={"method": "cold"})
    del built["tls_check"]
    plan = migration_plan(built)
    assert plan["method"] == "cold" and plan["situation"]["kind"] == "start"


def test_an_unknown_transport_is_refused(tmp_path):
    with pytest.raises(AnsibleFilterError, match="livemig_transport must be one of tls, tcp, got 'ssh'"):
        checked(tmp_path, transport="ssh")
