# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing and removing files so that a crash never leaves half of one.

Private to the livemig.qemu collection.
"""
from __future__ import annotations

import os
import tempfile


def atomic_write(path: str, content: str | bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace `path` with `content`: a reader, or a host after a crash, sees the old content or the new, never half.

    `durable` also flushes the file and its directory to stable storage (records); progress files and reports
    skip that.
    """
    directory = os.path.dirname(path) or "."
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        remove(temporary)
        raise
    if durable:
        fsync(directory, directory=True)


def remove(*paths: str) -> bool:
    """Remove each path that exists; True if any did."""
    removed = False
    for path in paths:
        try:
            os.unlink(path)
            removed = True
        except FileNotFoundError:
            pass
    return removed


def fsync(path: str, directory: bool = False) -> None:
    """Flush a file, or a directory's entries, to stable storage."""
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
