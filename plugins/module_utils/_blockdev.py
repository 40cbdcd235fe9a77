# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block devices that hold a VM's disks (an LVM volume, a SAN LUN, a loop device): checked, never created or
deleted; they belong to the operator.

Private to the livemig.qemu collection.
"""
from __future__ import annotations

import errno
import os
import stat

MIB = 1024 * 1024


def device_size(path: str) -> int:
    """The size in bytes of a block device (what `blockdev --getsize64` says)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def problem(path: str, need_bytes: int, check_unused: bool) -> str | None:
    """Why the device at `path` cannot hold a disk of `need_bytes`, or None.

    `check_unused`: no one may hold it (the device of a VM about to start here): a mounted filesystem, an LVM or
    md member or another exclusive opener makes an O_EXCL open fail with EBUSY.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"{path} does not exist on this host"
    except OSError as exc:
        return f"{path} cannot be read on this host: {exc.strerror}"
    if not stat.S_ISBLK(mode):
        return f"{path} is not a block device on this host"
    try:
        size = device_size(path)
    except OSError as exc:
        return f"{path} cannot be opened on this host: {exc.strerror}"
    if size < need_bytes:
        return f"{path} has {size // MIB} MiB on this host, the disk needs {need_bytes // MIB} MiB"
    if check_unused:
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_EXCL))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return f"{path} is in use on this host (mounted, or held by LVM, md or another program)"
            return f"{path} cannot be opened on this host: {exc.strerror}"
    return None
