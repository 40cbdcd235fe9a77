# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qemu-img on this host: create an image, read its size, map its data.

Private to the livemig.qemu collection. Every call has a deadline; failures raise ImageError naming the image.
"""
from __future__ import annotations

import json
import os
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files
from ansible_collections.livemig.qemu.plugins.module_utils._command import (
    TOOL_TIMEOUT, Completed, Program, run_tool, stderr_tail)
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError


class ImageError(LivemigError):
    """qemu-img could not create or read an image."""


def run(qemu_img: Program, *args: str, timeout: float = TOOL_TIMEOUT) -> Completed:
    return run_tool(qemu_img, *args, timeout=timeout, error=ImageError)


def create(qemu_img: Program, path: str, fmt: str, size: int) -> None:
    """A new empty image of `size` bytes, mode 0600 whatever the umask: `path` is created empty first (never
    through a symbolic link, never over a file), then qemu-img formats it. Its directory is created (0700) when
    missing."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        _files.private_file(path)
    except _files.PrivacyError as exc:
        raise ImageError(str(exc)) from None
    result = run(qemu_img, "create", "-q", "-f", fmt, path, str(size))
    if result.rc != 0:
        _files.remove(path)
        raise ImageError(f"cannot create {fmt} image {path} of {size} bytes: {stderr_tail(result)}")
    _files.keep_private(path)  # checked: the image qemu-img leaves must be 0600 as well


def info(qemu_img: Program, path: str, fmt: str | None = None) -> dict[str, Any]:
    """qemu-img info of an image, also while a QEMU has it open."""
    result = run(qemu_img, "info", "--force-share", "--output=json", *(["-f", fmt] if fmt else []), path)
    if result.rc != 0:
        raise ImageError(f"cannot read {fmt or 'disk'} image {path}: {stderr_tail(result)}")
    return json.loads(result.stdout)


def virtual_size(qemu_img: Program, path: str, fmt: str | None = None) -> int:
    return int(info(qemu_img, path, fmt)["virtual-size"])


def extents(qemu_img: Program, path: str, fmt: str, force_share: bool = False,
            timeout: float = TOOL_TIMEOUT) -> list[dict[str, Any]]:
    result = run(qemu_img, "map", "--output=json", "-f", fmt, *(["-U"] if force_share else []), path,
                 timeout=timeout)
    if result.rc != 0:
        raise ImageError(f"cannot map {fmt} image {path}: {stderr_tail(result)}")
    return json.loads(result.stdout)


def allocation(qemu_img: Program, path: str, fmt: str, force_share: bool = False,
               timeout: float = TOOL_TIMEOUT) -> tuple[int, int]:
    """(bytes of data in the image, all layers: what a sparse copy sends at most; virtual size)."""
    found = extents(qemu_img, path, fmt, force_share, timeout)
    return (sum(item["length"] for item in found if item["data"] and not item["zero"]),
            sum(item["length"] for item in found))
