"""Private directories and files: 0700 and 0600 whatever the umask, checked when they exist already."""
from __future__ import annotations

import contextlib
import os
import stat

import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._files import (
    PrivacyError, keep_private, private_dir, private_file, remove_empty_dirs)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_missing_directories_are_made_0700_with_their_parents_whatever_the_umask(tmp_path):
    with umask(0o022):
        private_dir(str(tmp_path / "run"), str(tmp_path / "state" / "deep" / "vm1"))
    assert [mode(tmp_path / name) for name in ("run", "state", "state/deep", "state/deep/vm1")] == [0o700] * 4


def test_an_existing_directory_loses_its_group_and_other_permissions(tmp_path):
    (tmp_path / "run").mkdir(mode=0o755)
    os.chmod(tmp_path / "run", 0o2775)
    private_dir(str(tmp_path / "run"))
    assert mode(tmp_path / "run") == 0o700


@pytest.mark.parametrize("make,why", [
    (lambda path: path.symlink_to(path.parent), "it is a symbolic link"),
    (lambda path: path.write_text("x"), "it is not a directory"),
])
def test_a_symbolic_link_or_a_file_is_refused(tmp_path, make, why):
    target = tmp_path / "run"
    make(target)
    with pytest.raises(PrivacyError, match=f"^{target} cannot be a private directory of the collection: {why}$"):
        private_dir(str(target))
    assert mode(tmp_path) == 0o700, "the link's target is not touched"


def test_a_directory_of_another_user_is_refused(tmp_path):
    other = tmp_path / "theirs"
    other.mkdir(mode=0o755)
    os.chown(other, 65534, 65534)  # the tests run as root, as the modules do on a hypervisor
    with pytest.raises(PrivacyError, match="belongs to uid 65534, not to this user"):
        private_dir(str(other))
    assert mode(other) == 0o755


def test_a_private_file_is_created_0600_and_never_over_something(tmp_path):
    path = tmp_path / "vm1-root.qcow2"
    with umask(0):
        private_file(str(path))
    assert mode(path) == 0o600 and path.read_bytes() == b""
    with pytest.raises(PrivacyError, match="File exists"):
        private_file(str(path))
    link = tmp_path / "link.qcow2"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PrivacyError):
        private_file(str(link))
    assert not (tmp_path / "elsewhere").exists(), "nothing is created through a symbolic link"


def test_keep_private_takes_group_and_other_permissions_off_a_file(tmp_path):
    image = tmp_path / "old.qcow2"
    image.write_bytes(b"")
    os.chmod(image, 0o644)
    keep_private(str(image))
    assert mode(image) == 0o600
    os.chmod(image, 0o400)
    keep_private(str(image))
    assert mode(image) == 0o400, "no permission is added"


def test_remove_empty_dirs_keeps_a_directory_that_holds_something(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "record.json").write_text("{}")
    remove_empty_dirs(str(tmp_path / "empty"), str(tmp_path / "full"), str(tmp_path / "missing"))
    assert not (tmp_path / "empty").exists() and (tmp_path / "full" / "record.json").exists()
