# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qemu_nbd_copy module: receive a file on this host, or send one to a host that receives it.

Private to the livemig.qemu collection. The receiving server is kept in this host's record of the VM, under the
volatile key `copy:<label>`. A failed step of the copy (NBDCopyError, ImageError, OSError) is reported prefixed
with the state; a refused request (a plain LivemigError) as it is.
"""
from __future__ import annotations

import os
import secrets
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _blockdev, _files, _qemuimg, _tlsqemu
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._migration_ops import host_port
from ansible_collections.livemig.qemu.plugins.module_utils._module import Task
from ansible_collections.livemig.qemu.plugins.module_utils._nbdcopy import (
    LABEL, NBDCopyError, check_destination, finish_file, is_device, nbd_uri, send, server_alive, start_server,
    stop_server, wait_server_exit)
from ansible_collections.livemig.qemu.plugins.module_utils._state import HostRecord, load_record, save_record

# What each state needs besides its host's locations (`host` or `run_dir`).
RECEIVING = {"listening": ("name", "label", "path", "address"), "finished": ("name", "label"),
             "absent": ("name", "label", "path")}
REQUIRED_IF = [("state", "sent", ("src", "uri"))] + [
    rule for state, needed in RECEIVING.items() for rule in (("state", state, needed),
                                                             ("state", state, ("host", "run_dir"), True))]


# -- the module's states -------------------------------------------------------------------------

def run(task: Task) -> dict[str, Any]:
    """The qemu_nbd_copy module: one state on the receiving or the sending host."""
    state = task.params["state"]
    try:
        return sent(task) if state == "sent" else _receiving(task)
    except (NBDCopyError, _qemuimg.ImageError, OSError) as exc:
        raise NBDCopyError(f"{state}: {exc}") from exc


def _receiving(task: Task) -> dict[str, Any]:
    params = task.params
    if not LABEL.fullmatch(params["label"]):
        raise LivemigError(f"invalid label {params['label']!r}: it must match {LABEL.pattern}")
    if params["path"] is not None and not os.path.isabs(params["path"]):
        raise LivemigError(f"path {params['path']} must be absolute")
    return getattr(_Receiver(task), params["state"])()


def _server_result(server: dict) -> dict[str, Any]:
    return {"uri": nbd_uri(server["host"], server["port"], server["export"]), "host": server["host"],
            "port": server["port"], "export": server["export"], "pid": server["pid"],
            "zeroed": not server.get("device", False)}


class _Receiver:
    """The receiving host's side of copy `label`: its server is the record's volatile key `copy:<label>`."""

    def __init__(self, task: Task):
        self.task, self.params, self.paths = task, task.params, task.paths
        self.label = self.params["label"]
        self.key = f"copy:{self.label}"
        self.record = load_record(self.paths.record, self.paths.vm) or HostRecord(vm=self.paths.vm)
        self.server = self.record.volatile.get(self.key)

    def _forget(self) -> None:
        del self.record.volatile[self.key]
        save_record(self.paths.record, self.record)

    def listening(self) -> dict[str, Any]:
        params, label, server = self.params, self.label, self.server
        path, fmt, size = params["path"], params["format"], params["size"]
        if server and server_alive(server):
            wanted = {"path": path, "format": fmt, "host": params["address"], "port": params["port"] or server["port"]}
            if any(server[item] != value for item, value in wanted.items()):
                raise LivemigError(f"copy {label} of VM {self.paths.vm} already listens for {server['path']} "
                                   f"({server['format']}) on {host_port(server['host'], server['port'])}: end it "
                                   "first (state=finished or state=absent)")
            return {"changed": False, "msg": f"qemu-nbd already listens for {path}", **_server_result(server)}
        tls = _tlsqemu.server(params)
        qemu_img, qemu_nbd = self.task.tool("qemu-img"), self.task.tool("qemu-nbd")
        if is_device(path):
            return self.listening_on_device(qemu_nbd, tls)
        exists = os.path.exists(path)
        if exists and params["replace"]:
            if self.task.check_mode:
                return {"changed": True, "msg": f"would replace {path} and serve it for copy {label}"}
            _files.remove(path)
            exists = False
        if exists:
            check_destination(qemu_img, path, fmt, size)
        elif size is None or size <= 0:
            raise LivemigError(f"{path} does not exist: give its virtual size in bytes (size) to create it")
        if self.task.check_mode:
            return {"changed": True, "msg": f"would {'' if exists else 'create and '}serve {path} for copy {label}"}
        _files.private_dir(*self.paths.private_dirs)
        if not exists:
            _qemuimg.create(qemu_img, path, fmt, size)  # 0600: a disk, or the state file (all of guest RAM)
        server = {"host": params["address"], "export": f"{label}-{secrets.token_hex(16)}", "path": path,
                  "format": fmt, "pidfile": self.paths.copy_pidfile(label)}
        if fmt == "raw":
            server["size"] = size if size is not None else os.path.getsize(path)
        try:
            server["pid"], server["port"] = start_server(qemu_nbd, path, fmt, server["host"], params["port"],
                                                         server["export"], server["pidfile"], tls=tls)
        except LivemigError:
            if not exists:
                _files.remove(path)
            raise
        self.record.volatile[self.key] = server
        save_record(self.paths.record, self.record)
        return {"changed": True, "msg": f"qemu-nbd serves {path} for copy {label}", **_server_result(server)}

    def listening_on_device(self, qemu_nbd: Any, tls: _tlsqemu.Server | None) -> dict[str, Any]:
        """A block device is never created, replaced or deleted: it is served as it is, cut to the disk's size, and
        the sender writes every byte (its old content is not zero)."""
        params, path, size = self.params, self.params["path"], self.params["size"]
        if params["format"] != "raw":
            raise LivemigError(f"{path} is a block device: copy into it with format raw")
        if not size or size <= 0:
            raise LivemigError(f"{path} is a block device: give the disk's size in bytes (size)")
        problem = _blockdev.problem(path, size, check_unused=True)
        if problem:
            raise LivemigError(problem)
        if self.task.check_mode:
            return {"changed": True, "msg": f"would serve the block device {path} for copy {self.label}"}
        server = {"host": params["address"], "export": f"{self.label}-{secrets.token_hex(16)}", "path": path,
                  "format": "raw", "pidfile": self.paths.copy_pidfile(self.label), "size": size, "device": True}
        server["pid"], server["port"] = start_server(qemu_nbd, path, "raw", server["host"], params["port"],
                                                     server["export"], server["pidfile"], size, tls)
        self.record.volatile[self.key] = server
        save_record(self.paths.record, self.record)
        return {"changed": True, "msg": f"qemu-nbd serves the block device {path} for copy {self.label}",
                **_server_result(server)}

    def finished(self) -> dict[str, Any]:
        label, timeout, server = self.label, self.params["timeout"], self.server
        if not server:
            return {"changed": False, "msg": f"no server recorded for copy {label}"}
        if self.task.check_mode:
            return {"changed": True, "msg": f"would wait for the server of copy {label} to exit"}
        exited = wait_server_exit(server, timeout)
        stop_server(server)
        self._forget()
        if not exited:
            raise LivemigError(f"qemu-nbd for copy {label} ({server['path']}) did not exit within {timeout:.0f}s: "
                               "the sender never connected or is still copying. It was stopped; the copy is "
                               "incomplete")
        finish_file(server["path"], server["format"], server.get("size"), self.params["fsync"])
        return {"changed": True, "msg": f"copy {label} into {server['path']} finished"}

    def absent(self) -> dict[str, Any]:
        label, path, server = self.label, self.params["path"], self.server
        if not server and not os.path.exists(path):
            return {"changed": False, "msg": f"no server and no {path} for copy {label}"}
        if self.task.check_mode:
            return {"changed": True, "msg": f"would stop the server of copy {label} and delete {path}"}
        if server:
            stop_server(server)
            self._forget()
        if is_device(path):  # the operator's device stays; its content is what the copy left
            return {"changed": bool(server), "msg": f"stopped copy {label}; the block device {path} stays"}
        _files.remove(path)
        return {"changed": True, "msg": f"stopped copy {label} and deleted {path}"}


def sent(task: Task) -> dict[str, Any]:
    params = task.params
    src, fmt, uri = params["src"], params["src_format"], params["uri"]
    device = is_device(src)
    if not os.path.isabs(src) or not (device or os.path.isfile(src)):
        raise LivemigError(f"src {src} must be an absolute path to an existing file or block device on this host")
    if device and not params["src_size"]:
        raise LivemigError(f"src {src} is a block device: give the size of the disk on it (src_size)")
    if not uri.startswith("nbd://"):
        raise LivemigError(f"uri {uri} must be the nbd:// address that state=listening returned")
    tls = _tlsqemu.client(params)
    if task.check_mode:
        return {"changed": True, "msg": f"would copy {src} ({fmt}) to {uri}"}
    qemu_img = task.tool("qemu-img")
    if device:  # every byte of the disk goes, zeros included
        allocated = size = params["src_size"]
    else:
        allocated, size = _qemuimg.allocation(qemu_img, src, fmt, params["force_share"], params["timeout"])
    seconds = send(qemu_img, src, fmt, uri, params["force_share"], params["timeout"], params["src_size"] if device
                   else None, params["target_is_zero"], tls)
    if fmt == "raw" and not device:
        size = os.path.getsize(src)  # QEMU rounds a raw file up to whole sectors
    return {"changed": True, "msg": f"copied {src} to {uri}", "bytes_allocated": allocated, "virtual_size": size,
            "seconds": round(seconds, 3)}
