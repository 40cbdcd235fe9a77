# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Planning a move on the controller: the request check, whether the target must test KVM, and the plan itself.

See migration_request_problem.yml, migration_needs_kvm.yml and migration_plan.yml.
"""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._negotiate import check_wishes, make_plan, needs_kvm_check
from ansible_collections.livemig.qemu.plugins.module_utils._situation import request_problem
from ansible_collections.livemig.qemu.plugins.module_utils._tlscert import (
    CRYPTOGRAPHY_ERROR, host_client_dn, tls_problems)


def migration_plan(request):
    if not isinstance(request, dict):
        raise AnsibleFilterError("migration_plan expects a dict with vm, spec, source, target, storage, wishes")
    missing = [key for key in ("vm", "spec", "source", "target") if key not in request]
    if missing:
        raise AnsibleFilterError(f"migration_plan: missing {', '.join(missing)}")
    try:
        if check_wishes(request.get("wishes"))["transport"] == "tls":
            request = {**request, "tls_check": tls_check(request)}
        return make_plan(request)
    except LivemigError as exc:  # a malformed request or spec
        raise AnsibleFilterError(f"migration_plan: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise AnsibleFilterError(f"migration_plan: malformed facts or spec ({exc!r})") from None


def tls_check(request):
    """Both hosts' TLS directories as qemu_host_check read them, compared here on the controller: whether the
    streams between them can be TLS, and the names QEMU needs for it."""
    if CRYPTOGRAPHY_ERROR:
        return {"problems": [CRYPTOGRAPHY_ERROR]}
    checks = request.get("host_checks") or {}
    problems, info = tls_problems((checks.get("source") or {}).get("tls"), (checks.get("target") or {}).get("tls"),
                                  request["source"]["name"], request["target"]["name"],
                                  request["target"].get("address") or "")
    return {"problems": problems, **info}


def migration_link_listener(source_check, source_name, address, transport, tls_dir):
    """The target's link-test listener, asked for in the target's preflight call, before there is a plan: on the
    target's migration address, over TLS admitting only the source's client certificate; None without an address
    (the plan then says that the target has none)."""
    if not address:
        return None
    if transport != "tls":
        return {"address": address}
    found = None if CRYPTOGRAPHY_ERROR else host_client_dn(source_name, (source_check or {}).get("tls"))
    return {"address": address, "tls_dir": tls_dir, "tls_peer_dn": found}


def migration_request_problem(vm, vms, source, target, target_known):
    return request_problem(vm, vms, source, target, bool(target_known))


def migration_needs_kvm(source_facts, vm, spec, method="auto", allow_cold=False):
    if not isinstance(source_facts, dict) or not isinstance(spec, dict):
        raise AnsibleFilterError("migration_needs_kvm expects the source's livemig_qemu facts and the VM's spec (dicts)")
    return needs_kvm_check(vm, source_facts, spec, method, allow_cold)


class FilterModule:
    def filters(self):
        return {"migration_plan": migration_plan, "migration_request_problem": migration_request_problem,
                "migration_link_listener": migration_link_listener,
                "migration_needs_kvm": migration_needs_kvm}
