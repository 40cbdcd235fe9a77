# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can this host hold the VM's devices: bridges and taps, UEFI firmware, block devices, the CD-ROM image, room for
the images, its migration address, its TLS files. The qemu_host_check module's handler.

Private to the livemig.qemu collection. It only reads. The planner (`_negotiate`) compares what the source and the
target report: firmware sizes, CD-ROM checksums, the target's room against the source's allocation.
"""
from __future__ import annotations

import errno
import hashlib
import os
import socket
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _blockdev, _firmware, _taps, _tlsfiles, _vmhost
from ansible_collections.livemig.qemu.plugins.module_utils._module import Task
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import VMSpec, parse_spec

CHUNK = 4 * 1024 * 1024


def file_identity(path: str) -> dict[str, Any]:
    """Size and SHA-256 of a read-only image, to tell whether two hosts have the same one."""
    if not os.path.isfile(path):
        return {"path": path, "exists": False}
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return {"path": path, "exists": True, "size": os.path.getsize(path), "sha256": digest.hexdigest()}


def free_bytes(directory: str) -> dict[str, Any]:
    """Free space for an unprivileged writer in the directory (or the nearest existing parent), and its filesystem."""
    while not os.path.isdir(directory) and directory != os.path.dirname(directory):
        directory = os.path.dirname(directory)
    stats = os.statvfs(directory)
    return {"free": stats.f_bavail * stats.f_frsize, "device": os.stat(directory).st_dev}


def address_check(address: str) -> dict[str, Any]:
    """Whether a listener can bind `address` on this host; one the host does not have fails with EADDRNOTAVAIL."""
    found: dict[str, Any] = {"address": address, "bindable": False}
    try:
        family, _kind, _protocol, _name, socket_address = socket.getaddrinfo(address, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind(socket_address)
    except socket.gaierror as exc:
        return {**found, "reason": f"it does not resolve ({exc.strerror})"}
    except OSError as exc:
        return {**found, "reason": "this host does not have that address (EADDRNOTAVAIL)"
                if exc.errno == errno.EADDRNOTAVAIL else f"a socket cannot bind it ({exc.strerror})"}
    return {**found, "bindable": True}


def volumes(task: Task, spec: VMSpec, runs_here: bool) -> tuple[dict[str, Any], list[str]]:
    """Per volume: kind, path, bytes allocated here (files), and the problems of block devices."""
    found, problems = {}, []
    for volume in spec.volumes:
        path = task.paths.disk(volume)
        info: dict[str, Any] = {"kind": volume.kind, "path": path, "shared": volume.shared,
                                "exists": os.path.exists(path)}
        if volume.kind == "block":
            problem = _blockdev.problem(path, volume.size_bytes, check_unused=not runs_here)
            if problem:
                problems.append(f"disk {volume.name}: {problem}")
            info["size"] = volume.size_bytes
        elif info["exists"]:
            info["allocated"] = os.stat(path).st_blocks * 512
        found[volume.name] = info
    return found, problems


def run(task: Task) -> dict[str, Any]:
    """The qemu_host_check module: what this host offers the VM, and what keeps it from running the VM here."""
    params, paths = task.params, task.paths
    spec = parse_spec(paths.vm, params["spec"])
    runs_here = _vmhost.running_pid(paths) is not None
    result: dict[str, Any] = {"changed": False, "runs_here": runs_here}
    result["volumes"], problems = volumes(task, spec, runs_here)
    if spec.nics:
        problems += _taps.host_problems(task.program("ip", "install iproute2 (the VM has NICs)"), spec,
                                        params["accel"], own_taps=runs_here)
    if spec.firmware == "uefi":
        result["firmware"] = _firmware.find_uefi(params["machine"], task.host["qemu_binary"])
        if not result["firmware"]["found"]:
            problems.append(f"firmware uefi: {result['firmware']['reason']}")
    if spec.cdrom:
        result["cdrom"] = file_identity(spec.cdrom)
    result["room"] = {"image_dir": free_bytes(paths.image_dir), "state_dir": free_bytes(paths.state_dir)}
    if params["address"]:
        result["address"] = address_check(params["address"])
    if params["tls_dir"]:
        result["tls"] = _tlsfiles.inspect(params["tls_dir"])
    result["problems"] = problems
    return result
