# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs livemig.qemu.qemu_tls_certificate; a host that does not answer fails the task (see plugin_utils/_peer.py)."""
from __future__ import annotations

from ansible_collections.livemig.qemu.plugins.plugin_utils._peer import PeerAction as ActionModule

__all__ = ["ActionModule"]
