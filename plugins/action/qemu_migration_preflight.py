# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs livemig.qemu.qemu_migration_preflight: its lease as qemu_vm_lock's action takes it (with the controller
process's identity, taking over a lease whose controller on this machine has ended), a failure's message starting
with the host it happened on, and a host that does not answer failing the task (see plugin_utils/_peer.py)."""
from __future__ import annotations

from ansible_collections.livemig.qemu.plugins.plugin_utils import _controller
from ansible_collections.livemig.qemu.plugins.plugin_utils._peer import PeerAction


class ActionModule(PeerAction):
    """A refused lease of a play whose ansible-playbook was killed on this controller (and whose source-side job has
    ended too) is taken over at once; the call failed at its lease, before any other step ran."""

    def run(self, tmp=None, task_vars=None):
        if self._task.args.get("lease"):
            self._with_lease(controller=_controller.identity())
        result = super().run(tmp, task_vars)
        held = result.get("lock") if result.get("failed_step") == "lease" else None
        if held and not result.get("busy") and _controller.gone(held.get("controller")):
            self._with_lease(replace=held["id"])
            result = super().run(tmp, task_vars)
        if result.get("failed_step"):
            host = self._task.delegate_to or (task_vars or {}).get("inventory_hostname", "the host")
            result["msg"] = f"on {host}, {result['msg']}"
        return result

    def _with_lease(self, **fields):
        self._task.args = {**self._task.args, "lease": {**self._task.args["lease"], **fields}}
