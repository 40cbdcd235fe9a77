# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every per-VM path on a host and every name the collection gives a VM's QEMU objects, in one place.

Private to the livemig.qemu collection. Paths derive from the host's own directories, so each host computes its
own; nothing here is ever copied between hosts.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError


def node_name(disk: str) -> str:
    """The block node of a disk's format layer: what the guest device, mirrors and exports use."""
    return f"disk-{disk}"


def file_node(disk: str) -> str:
    """The block node of a disk's file (protocol) layer."""
    return f"file-{disk}"


def device_id(disk: str) -> str:
    return f"vd-{disk}"


def mirror_job(node: str) -> str:
    return f"livemig-mirror-{node}"


def mirror_target(node: str) -> str:
    """The NBD client node a mirror of `node` writes into."""
    return f"livemig-nbd-{node}"


def nic_id(nic: str) -> str:
    """The guest NIC's device id, which is also its net client name (announce-self's `interfaces`)."""
    return f"net-{nic}"


def netdev_id(nic: str) -> str:
    return f"nd-{nic}"


def tap_name(vm: str, nic: str) -> str:
    """The tap a NIC's QEMU opens on its host: the same name on every host, so a host can check before the VM comes
    that the name is free; at most 15 characters, the kernel's limit."""
    return "lm" + hashlib.sha256(f"{vm}/{nic}".encode()).hexdigest()[:12]


EXPORT_PREFIX = "livemig-export-"


def export_id(disk: str) -> str:
    """QEMU's id of the NBD export of a disk (not its export name, which is random)."""
    return EXPORT_PREFIX + disk


SOCKET_PATH_MAX = 107  # bytes of a unix socket's path: sun_path holds 108, with the terminating NUL


class PathError(LivemigError, ValueError):
    """The host's directories and the VM's name give paths that cannot work."""


def _run_file(name: str, doc: str | None = None) -> property:
    """A VM's file in its own directory on the host's run directory: `<run_dir>/<vm>/<name>`."""
    return property(lambda paths: os.path.join(paths.vm_run_dir, name), doc=doc)


def _state_file(name: str, doc: str | None = None) -> property:
    """A VM's file in its own directory on the host's state directory: `<state_dir>/<vm>/<name>`."""
    return property(lambda paths: os.path.join(paths.vm_state_dir, name), doc=doc)


def _flat_file(directory: str, suffix: str) -> property:
    """A file of livemig.qemu 0.3's flat layout: `<directory>/<vm><suffix>`."""
    return property(lambda legacy: os.path.join(getattr(legacy, directory), f"{legacy.vm}{suffix}"))


@dataclass(frozen=True)
class LegacyPaths:
    """Where livemig.qemu 0.3 kept a VM's files: `<run_dir>/<vm>.qmp`, `<run_dir>/<vm>.pid`, the record
    `<state_dir>/<vm>.json` and the state file `<state_dir>/<vm>.state`; only read, to take such a VM over."""
    vm: str
    run_dir: str
    state_dir: str

    qmp = _flat_file("run_dir", ".qmp")
    pidfile = _flat_file("run_dir", ".pid")
    record = _flat_file("state_dir", ".json")
    state_file = _flat_file("state_dir", ".state")


@dataclass(frozen=True)
class VMPaths:
    """Where this host keeps a VM's files: its run files in `<run_dir>/<vm>/`, its record and state file in
    `<state_dir>/<vm>/`, its images `<image_dir>/<vm>-<disk>.<format>`. A directory per VM, so that no VM name
    can take another VM's file, whatever dots it has."""
    vm: str
    image_dir: str
    run_dir: str
    state_dir: str
    shared_dir: str | None = None

    def __post_init__(self) -> None:
        longest = len(os.fsencode(self.job_qmp))  # the longest name of the VM's sockets
        if self.vm and longest > SOCKET_PATH_MAX:
            room = SOCKET_PATH_MAX - (longest - len(os.fsencode(self.run_dir)))
            raise PathError(f"VM {self.vm}: its socket {self.job_qmp} would be {longest} bytes long, more than the "
                            f"{SOCKET_PATH_MAX} a unix socket path may have: give this host a shorter "
                            f"livemig_run_dir than {self.run_dir} (at most {max(room, 1)} bytes for this VM), or the "
                            "VM a shorter name")

    @classmethod
    def on_host(cls, vm: str, run_dir: str, image_dir: str | None = None, state_dir: str | None = None,
                shared_dir: str | None = None) -> VMPaths:
        """The defaults: images in the run directory, records and state files beside the images."""
        images = image_dir or run_dir
        return cls(vm, images, run_dir, state_dir or images, shared_dir or None)

    def disk(self, disk: Any) -> str:
        """The image of a disk (anything with `name`, `format`, `shared` and `path`): a block device's own path, else
        a file in the shared or the image directory."""
        if getattr(disk, "path", None):
            return disk.path
        directory = self.shared_dir if disk.shared and self.shared_dir else self.image_dir
        return os.path.join(directory, f"{self.vm}-{disk.name}.{disk.format}")

    @property
    def vm_run_dir(self) -> str:
        return os.path.join(self.run_dir, self.vm)

    @property
    def vm_state_dir(self) -> str:
        return os.path.join(self.state_dir, self.vm)

    @property
    def private_dirs(self) -> tuple[str, ...]:
        """The directories only this host's user may enter (mode 0700), each before those inside it; never the
        shared directory, which is the operator's."""
        return tuple(dict.fromkeys((self.run_dir, self.vm_run_dir, self.image_dir, self.state_dir,
                                    self.vm_state_dir)))

    qmp = _run_file("qmp")
    job_qmp = _run_file("job.qmp", "A second monitor for long jobs, so they never block the main one.")
    serial = _run_file("serial")
    guest_agent = _run_file("qga", "The guest agent's channel (virtio-serial port org.qemu.guest_agent.0).")
    pidfile = _run_file("pid")
    log = _run_file("log")
    progress = _run_file("progress.json", "The latest sample of a migration from this host, rewritten every "
                                          "second by qemu_migrate.")
    record = _state_file("record.json")
    state_file = _state_file("state", "Where the stateful path saves (source) or receives (target) the VM's RAM "
                                      "and device state.")
    lock = _state_file("lock.json", "Who moves or changes the VM on this host now.")

    def copy_pidfile(self, label: str) -> str:
        """The pid file of the one-shot qemu-nbd that receives copy `label`."""
        return os.path.join(self.vm_run_dir, f"copy-{label}.pid")

    @property
    def sockets(self) -> tuple[str, ...]:
        """The sockets every VM has (a VM with a guest agent also has `guest_agent`)."""
        return (self.qmp, self.job_qmp, self.serial)

    @property
    def legacy(self) -> LegacyPaths:
        """This VM's files as livemig.qemu 0.3 named them."""
        return LegacyPaths(self.vm, self.run_dir, self.state_dir)


def token_path(image: str) -> str:
    """The shared-storage token file next to an image."""
    directory, filename = os.path.split(image)
    return os.path.join(directory, f".{filename}.livemig-token")
