# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which of a VM's disk images are the same file on two hosts: a token next to each image on one host, looked
for on the other.

Private to the livemig.qemu collection. `run` is the qemu_storage_check module's handler.
"""
from __future__ import annotations

import os
import secrets
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files, _qemuimg
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._module import Task
from ansible_collections.livemig.qemu.plugins.module_utils._paths import token_path
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import Disk, parse_spec


def read_token(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def write_token(path: str, token: str, disk: Disk) -> None:
    try:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
    except OSError as exc:
        raise LivemigError(f"cannot write the token file next to disk {disk.name}: {exc}") from None


def remove_token(path: str) -> None:
    try:
        _files.remove(path)
    except OSError as exc:
        raise LivemigError(f"cannot remove the token file {path}: {exc}") from None


def run(task: Task) -> dict[str, Any]:
    """The qemu_storage_check module: mark, check or unmark every disk image of the VM on this host."""
    paths, state = task.paths, task.params["state"]
    spec = parse_spec(paths.vm, task.params["spec"])
    token = task.params["token"] if state == "checked" else secrets.token_hex(16)
    changed = False
    disks = {}
    for disk in spec.volumes:
        image = paths.disk(disk)
        marker = token_path(image)
        info: dict[str, Any] = {"path": image, "exists": os.path.exists(image)}
        if disk.kind == "block":
            # No room for a token beside a device node: a block device's sharing is declared, not detected.
            if state == "marked":
                info["virtual_size"] = disk.size_bytes
            elif state == "checked":
                info["same_file"] = False
        elif state == "marked" and info["exists"]:
            qemu_img = task.tool("qemu-img")
            try:
                info["virtual_size"] = _qemuimg.virtual_size(qemu_img, image)
            except _qemuimg.ImageError as exc:
                raise LivemigError(f"disk {disk.name}: {exc}") from None
            changed = True
            if not task.check_mode:
                write_token(marker, token, disk)
        elif state == "checked":
            info["same_file"] = info["exists"] and read_token(marker) == token
        elif state == "unmarked" and os.path.exists(marker):
            changed = True
            if not task.check_mode:
                remove_token(marker)
        disks[disk.name] = info
    result = {"changed": changed, "disks": disks}
    if state != "unmarked":
        result["token"] = token
    return result
