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


def _run_file(suffix: str, doc: str | None = None) -> property:
    """A VM's file in the host's run directory: `<run_dir>/<vm><suffix>`."""
    return property(lambda paths: os.path.join(paths.run_dir, f"{paths.vm}{suffix}"), doc=doc)


@dataclass(frozen=True)
class VMPaths:
    """Where this host keeps a VM's files."""
    vm: str
    image_dir: str
    run_dir: str
    state_dir: str
    shared_dir: str | None = None

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

    qmp = _run_file(".qmp")
    job_qmp = _run_file(".job.qmp", "A second monitor for long jobs, so they never block the main one.")
    serial = _run_file(".serial")
    guest_agent = _run_file(".qga", "The guest agent's channel (virtio-serial port org.qemu.guest_agent.0).")
    pidfile = _run_file(".pid")
    log = _run_file(".log")
    progress = _run_file(".progress.json", "The latest sample of a migration from this host, rewritten every "
                                           "second by qemu_migrate.")

    def copy_pidfile(self, label: str) -> str:
        """The pid file of the one-shot qemu-nbd that receives copy `label`."""
        return os.path.join(self.run_dir, f"{self.vm}.copy-{label}.pid")

    @property
    def record(self) -> str:
        return os.path.join(self.state_dir, f"{self.vm}.json")

    @property
    def state_file(self) -> str:
        """Where the stateful path saves (source) or receives (target) the VM's RAM and device state."""
        return os.path.join(self.state_dir, f"{self.vm}.state")

    @property
    def sockets(self) -> tuple[str, ...]:
        """The sockets every VM has (a VM with a guest agent also has `guest_agent`)."""
        return (self.qmp, self.job_qmp, self.serial)


def token_path(image: str) -> str:
    """The shared-storage token file next to an image."""
    directory, filename = os.path.split(image)
    return os.path.join(directory, f".{filename}.livemig-token")
