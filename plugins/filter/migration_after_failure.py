# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What to undo after a failed step of a move, decided on the controller: see migration_after_failure.yml."""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.livemig.qemu.plugins.module_utils._situation import after_failure


def migration_after_failure(result, plan, source_facts, target_report, phase, migration_id):
    if not isinstance(result, dict) or not isinstance(plan, dict):
        raise AnsibleFilterError("migration_after_failure expects the failed task's result and the plan (dicts)")
    try:
        return after_failure(result, plan, source_facts, target_report, phase, migration_id)
    except (KeyError, TypeError, AttributeError) as exc:
        raise AnsibleFilterError(f"migration_after_failure: malformed plan or facts ({exc!r})") from None


class FilterModule:
    def filters(self):
        return {"migration_after_failure": migration_after_failure}
