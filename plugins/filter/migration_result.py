# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The figures of a finished move and the line telling them: see migration_result.yml and
migration_result_line.yml."""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.livemig.qemu.plugins.module_utils._outcome import OutcomeError, build_result, result_line


def migration_result(steps, plan, started, finished, play_started=None):
    if not isinstance(steps, dict) or not isinstance(plan, dict):
        raise AnsibleFilterError("migration_result expects the move's registered steps and the plan (dicts)")
    try:
        return build_result(steps, plan, started, finished, play_started)
    except OutcomeError as exc:
        raise AnsibleFilterError(f"migration_result: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise AnsibleFilterError(f"migration_result: malformed steps or plan ({exc!r})") from None


def migration_result_line(result):
    if not isinstance(result, dict):
        raise AnsibleFilterError("migration_result_line expects livemig_result (a dict)")
    try:
        return result_line(result)
    except (KeyError, TypeError, AttributeError) as exc:
        raise AnsibleFilterError(f"migration_result_line: malformed result ({exc!r})") from None


class FilterModule:
    def filters(self):
        return {"migration_result": migration_result, "migration_result_line": migration_result_line}
