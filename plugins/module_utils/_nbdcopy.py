# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sparse copy of a file between hosts over NBD: a one-shot qemu-nbd receives, qemu-img convert sends.

Private to the livemig.qemu collection. The primitives of the qemu_nbd_copy module (`_copy`): the destination
image, the receiving server and the sender. Failures raise NBDCopyError saying what to check.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import time
import urllib.parse

from ansible_collections.livemig.qemu.plugins.module_utils import _files, _qemuimg, _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._command import Program, run_tool, stderr_tail
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import bind_with_retry, host_port
from ansible_collections.livemig.qemu.plugins.module_utils._state import process_alive
from ansible_collections.livemig.qemu.plugins.module_utils._vmhost import kill_qemu, wait_exit

LABEL = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
FORMATS = ("qcow2", "raw")
SECTOR = 512


class NBDCopyError(LivemigError):
    """A step of the copy failed; the message names the step, the cause and what to check."""


def nbd_uri(host: str, port: int, export: str) -> str:
    return f"nbd://{host_port(host, port)}/{export}"


def is_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def image_args(path: str, fmt: str, size: int | None) -> list[str]:
    """How qemu-img and qemu-nbd open one side of the copy: a file by its format; a block device as raw, cut to the
    disk's size, since the device may be larger than the disk (and than the other host's device)."""
    if not is_device(path):
        return ["-f", fmt, path]
    if not size:
        raise NBDCopyError(f"{path} is a block device: the size of the disk on it is needed")
    return ["--image-opts", f"driver=raw,size={size},file.driver=host_device,file.filename={path.replace(',', ',,')}"]


def round_up(size: int) -> int:
    """QEMU sees every image in whole 512-byte sectors."""
    return -(-size // SECTOR) * SECTOR


# -- images --------------------------------------------------------------------------------------

def check_destination(qemu_img: Program, path: str, fmt: str, size: int | None) -> None:
    """An existing destination must have the right size and hold no data.

    The sender skips every zero area (--target-is-zero), so data already in the destination would survive
    where the source has zeros.
    """
    actual = _qemuimg.virtual_size(qemu_img, path, fmt)
    if size is not None and actual != round_up(size):
        raise NBDCopyError(f"{path} exists with virtual size {actual} bytes, not {size}: give its size or remove "
                           "it first (state=absent)")
    if _qemuimg.allocation(qemu_img, path, fmt)[0]:
        raise NBDCopyError(f"{path} exists and holds data, which a sparse copy would not overwrite everywhere: "
                           "remove it first (state=absent)")


def finish_file(path: str, fmt: str, size: int | None, fsync: bool) -> None:
    # QEMU writes whole sectors: cut a raw file back to the exact size it was created for.
    if fmt == "raw" and size is not None and not is_device(path) and os.path.getsize(path) != size:
        os.truncate(path, size)
    if fsync:
        _files.fsync(path)


# -- the receiving server ------------------------------------------------------------------------

def start_server(qemu_nbd: Program, path: str, fmt: str, address: str, port: int, export: str,
                 pidfile: str, size: int | None = None, tls: _tlsqemu.Server | None = None) -> tuple[int, int]:
    """Start a daemonized one-shot qemu-nbd (TLS only, for the one peer, when `tls` says so); it listens when this
    returns. Returns (pid, port)."""
    _files.private_dir(os.path.dirname(pidfile))

    def listen(chosen: int) -> int:
        _files.remove(pidfile)
        # Not --persistent: the server exits once its one client disconnects, and flushes the image as it closes.
        result = run_tool(qemu_nbd, "--fork", "--pid-file", pidfile, "--bind", address, "--port", str(chosen),
                          "--export-name", export, "--cache=writeback", *_tlsqemu.qemu_nbd_arguments(tls),
                          *image_args(path, fmt, size),
                          error=NBDCopyError)
        if result.rc != 0:
            raise NBDCopyError(f"qemu-nbd cannot serve {path} on {host_port(address, chosen)}: {stderr_tail(result)}")
        return _read_pid(pidfile)

    return bind_with_retry(listen, address, port)


def _read_pid(pidfile: str) -> int:
    try:
        with open(pidfile, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError) as exc:
        raise NBDCopyError(f"qemu-nbd started but left no pid in {pidfile}: {exc}") from None


def server_alive(server: dict) -> bool:
    """The recorded qemu-nbd still runs: the pid lives and still serves the recorded export."""
    pid = server.get("pid")
    if not process_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == "qemu-nbd" and server.get("export") in argv


def stop_server(server: dict, timeout: float = 10.0) -> None:
    if server_alive(server):
        with contextlib.suppress(ProcessLookupError):
            os.kill(server["pid"], signal.SIGTERM)
        if not wait_exit(server["pid"], timeout):
            kill_qemu(server["pid"])
    _files.remove(server["pidfile"])


def wait_server_exit(server: dict, timeout: float) -> bool:
    return wait_exit(server["pid"], timeout, alive=lambda _pid: server_alive(server))


# -- the sender ----------------------------------------------------------------------------------

def target_args(uri: str, tls: _tlsqemu.Client | None) -> list[str]:
    """How qemu-img convert writes into the export at `uri`: as a raw image, or over TLS as an NBD node of its own
    (a URI has no room for the credentials)."""
    if tls is None:
        return ["-O", "raw", uri]
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "nbd" or not parts.hostname or not parts.port or not parts.path.strip("/"):
        raise NBDCopyError(f"{uri} is not an nbd://HOST:PORT/EXPORT address")
    return [*_tlsqemu.qemu_img_object(tls), "--target-image-opts",
            _tlsqemu.nbd_image_options(parts.hostname, parts.port, urllib.parse.unquote(parts.path.lstrip("/")), tls)]


def send(qemu_img: Program, src: str, src_format: str, uri: str, force_share: bool, timeout: float,
         src_size: int | None = None, target_is_zero: bool = True, tls: _tlsqemu.Client | None = None) -> float:
    """Write the source's data into the NBD export (over TLS when `tls` says so): only its data into an empty
    destination, its zeros too into one that holds old data (a block device). Returns the seconds it took."""
    started = time.monotonic()
    *source_options, source = image_args(src, src_format, src_size)
    *target_options, target = target_args(uri, tls)
    result = run_tool(qemu_img, "convert", "-n", *(["--target-is-zero"] if target_is_zero else []), *source_options,
                      *target_options, *(["-U"] if force_share else []), source, target, timeout=timeout,
                      error=NBDCopyError)
    if result.rc != 0:
        raise NBDCopyError(f"copying {src} to {uri} failed: {stderr_tail(result)}. Check that the "
                           "receiving host listens for this copy (state=listening) and is reachable from here, that "
                           "no other client used the export (it serves one), and that the source is readable"
                           f"{'' if force_share else ' and not in use (force_share)'}")
    return time.monotonic() - started
