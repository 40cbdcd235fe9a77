# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration plan, computed on the controller from both hosts' facts: see migration_plan.yml."""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.livemig.qemu.plugins.module_utils._negotiate import PlanError, make_plan


def migration_plan(request):
    if not isinstance(request, dict):
        raise AnsibleFilterError("migration_plan expects a dict with vm, spec, source, target, storage, wishes")
    missing = [key for key in ("vm", "spec", "source", "target") if key not in request]
    if missing:
        raise AnsibleFilterError(f"migration_plan: missing {', '.join(missing)}")
    try:
        return make_plan(request)
    except PlanError as exc:
        raise AnsibleFilterError(f"migration_plan: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError(f"migration_plan: malformed facts or spec ({exc!r})") from None


class FilterModule:
    def filters(self):
        return {"migration_plan": migration_plan}
