# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The action behind every livemig.qemu module: run the module as Ansible would, but report a host that does not
answer as a failed task rather than an unreachable host.

Private to the livemig.qemu collection. The playbooks run a move on the source and delegate the target's steps to
it, so Ansible would mark the *source* unreachable when the *target* drops off the network: it then runs no
rescue, and the source never gets its VM back. As a failure, the role's rescue runs and rolls back from the
source's own record.
"""
from __future__ import annotations

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.action.normal import ActionModule as NormalAction


class PeerAction(NormalAction):
    """`normal`, with a connection failure turned into `failed` and `host_unreachable`."""

    def run(self, tmp=None, task_vars=None):
        try:
            return super().run(tmp, task_vars)
        except AnsibleConnectionFailure as exc:
            host = self._task.delegate_to or (task_vars or {}).get("inventory_hostname", "the host")
            return {"failed": True, "host_unreachable": True, "changed": False,
                    "msg": f"{host} did not answer: {str(exc).strip()}"}
