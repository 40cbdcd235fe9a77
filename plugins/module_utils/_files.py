# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing and removing files so that a crash never leaves half of one, and keeping them private: the
collection's directories 0700, its images and state files 0600, whatever the umask.

Private to the livemig.qemu collection.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class PrivacyError(LivemigError):
    """A directory or file of the collection cannot be made private: the message says what is wrong with it."""


def private_dir(*paths: str) -> None:
    """Each path a directory only this user may enter, in order: created 0700 when missing (with its missing
    parents, 0700 too); an existing one must be a directory of this user, not a symbolic link, and loses any
    permission beyond 0700."""
    for path in paths:
        _make_dirs(path)
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            why = "it is a symbolic link" if os.path.islink(path) else \
                "it is not a directory" if exc.errno == errno.ENOTDIR else exc.strerror
            raise PrivacyError(f"{path} cannot be a private directory of the collection: {why}") from None
        try:
            info = os.fstat(descriptor)
            if info.st_uid != os.geteuid():
                raise PrivacyError(f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}): "
                                   "give the collection a directory of its own")
            if stat.S_IMODE(info.st_mode) != PRIVATE_DIR:
                os.fchmod(descriptor, PRIVATE_DIR)
        finally:
            os.close(descriptor)


def _make_dirs(path: str) -> None:
    """Create `path` and its missing parents, each 0700."""
    parent = os.path.dirname(path)
    if os.path.lexists(path) or parent == path:
        return
    _make_dirs(parent)
    try:
        os.mkdir(path, PRIVATE_DIR)
        os.chmod(path, PRIVATE_DIR)  # mkdir's mode went through the umask
    except FileExistsError:
        pass  # made by someone else meanwhile: checked like any existing one
    except OSError as exc:
        raise PrivacyError(f"cannot create the directory {path}: {exc.strerror}") from None


def private_file(path: str) -> None:
    """Create `path` empty, mode 0600 whatever the umask; fail if anything is there already, a symbolic link too."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    except OSError as exc:
        raise PrivacyError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(descriptor, PRIVATE_FILE)
    finally:
        os.close(descriptor)


def keep_private(path: str) -> None:
    """Take group and other permissions off an existing regular file (an image an older version made 0644)."""
    info = os.stat(path)
    if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
        os.chmod(path, stat.S_IMODE(info.st_mode) & ~0o077)


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


def remove_empty_dirs(*paths: str) -> None:
    """Remove each directory that exists and is empty."""
    for path in paths:
        try:
            os.rmdir(path)
        except OSError:
            pass  # missing, or still holds something: it stays


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
