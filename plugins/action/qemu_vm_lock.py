# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs livemig.qemu.qemu_vm_lock with the controller process's identity, and takes over a lease whose controller
on this machine has ended; a host that does not answer fails the task (see plugin_utils/_peer.py)."""
from __future__ import annotations

from ansible_collections.livemig.qemu.plugins.plugin_utils import _controller
from ansible_collections.livemig.qemu.plugins.plugin_utils._peer import PeerAction


class ActionModule(PeerAction):
    """A refused lease of a play whose ansible-playbook was killed on this controller (and whose source-side job has
    ended too) is taken over at once: a re-run of the play needs no livemig_break_lock."""

    def run(self, tmp=None, task_vars=None):
        if self._task.args.get("state", "locked") != "locked":
            return super().run(tmp, task_vars)
        self._task.args = {**self._task.args, "controller": _controller.identity()}
        result = super().run(tmp, task_vars)
        held = result.get("lock") if result.get("failed") else None
        if held and not result.get("busy") and _controller.gone(held.get("controller")):
            self._task.args = {**self._task.args, "replace": held["id"]}
            result = super().run(tmp, task_vars)
        return result
