# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's taps on this host: checked before QEMU opens them, put on their bridge after, gone with QEMU.

Private to the livemig.qemu collection. QEMU creates each tap itself (`ifname=`, not persistent), so the kernel
deletes it when that QEMU exits, however it exits: a host's taps live exactly as long as its QEMU. Nothing here
ever looks at another host. All calls go through `ip` (iproute2), so they act in this host's network namespace.
"""
from __future__ import annotations

import json
import os
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._command import Program, run_tool, stderr_tail
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._paths import tap_name
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import Nic, VMSpec

TUN_DEVICE = "/dev/net/tun"
VHOST_DEVICE = "/dev/vhost-net"


class TapError(LivemigError):
    """A tap or bridge of this host is not as the VM needs it."""


def link(ip: Program, name: str) -> dict[str, Any] | None:
    """What `ip -d link show` says of a network device, None when there is none of that name."""
    result = run_tool(ip, "-j", "-d", "link", "show", "dev", name, error=TapError)
    if result.rc != 0:
        return None
    try:
        return json.loads(result.stdout)[0]
    except (ValueError, IndexError, KeyError):
        raise TapError(f"ip link show {name} gave output that is not JSON: {result.stdout[:200]!r}") from None


def bridge_problem(ip: Program, nic: Nic) -> str | None:
    """Why this host's bridge cannot take the NIC, or None."""
    device = link(ip, nic.bridge)
    where = f"NIC {nic.name}: bridge {nic.bridge}"
    if device is None:
        return f"{where} does not exist on this host: create it (the same name on every host)"
    if (device.get("linkinfo") or {}).get("info_kind") != "bridge":
        return f"{where} is not a bridge on this host"
    if "UP" not in device.get("flags", []):
        return f"{where} is down on this host: set it up"
    if nic.mtu is not None and int(device.get("mtu", 0)) < nic.mtu:
        return f"{where} has MTU {device.get('mtu')} on this host, less than the NIC's {nic.mtu}"
    return None


def host_problems(ip: Program, spec: VMSpec, accel: str | None, own_taps: bool = False) -> list[str]:
    """Everything that keeps this VM's NICs from working on this host: bridges, taps already taken, devices.

    `own_taps`: this host's QEMU of the VM runs, so its taps exist and are no conflict.
    """
    if not spec.nics:
        return []
    problems = []
    if not os.path.exists(TUN_DEVICE):
        problems.append(f"{TUN_DEVICE} is missing: load the tun kernel module")
    if accel == "kvm" and any(nic.virtio for nic in spec.nics) and not os.path.exists(VHOST_DEVICE):
        problems.append(f"{VHOST_DEVICE} is missing (the VM runs under KVM with vhost-net): load the vhost_net "
                        "kernel module")
    for nic in spec.nics:
        problem = bridge_problem(ip, nic)
        if problem:
            problems.append(problem)
        tap = tap_name(spec.name, nic.name)
        if not own_taps and link(ip, tap) is not None:
            problems.append(f"NIC {nic.name}: the tap name {tap} is already taken on this host (by a device "
                            f"no QEMU of this VM owns): remove it or find who made it")
    return problems


def tap_mac(guest_mac: str) -> str:
    """The tap's own address: the guest's with another first byte, so the bridge never sees the guest's MAC as its
    own port's, and a bridge that takes its lowest port MAC never takes this one."""
    return ("fa" if guest_mac.startswith("fe") else "fe") + guest_mac[2:]


def attach(ip: Program, spec: VMSpec) -> dict[str, str]:
    """Put each of the VM's taps (just created by QEMU, down) on its bridge and up. Returns {nic: tap}."""
    taps = {}
    for nic in spec.nics:
        tap = tap_name(spec.name, nic.name)
        bridge = link(ip, nic.bridge)
        mtu = nic.mtu or (bridge or {}).get("mtu")
        args = ["link", "set", "dev", tap, "address", tap_mac(nic.mac)]
        args += ["mtu", str(mtu)] if mtu else []
        result = run_tool(ip, *args, "master", nic.bridge, "up", error=TapError)
        if result.rc != 0:
            raise TapError(f"NIC {nic.name}: cannot put tap {tap} on bridge {nic.bridge}: {stderr_tail(result)}")
        taps[nic.name] = tap
    return taps


def remove_leftovers(ip: Program, taps: dict[str, str]) -> list[str]:
    """After this host's QEMU of the VM is gone: delete any of its recorded taps that still exist (only a tap that
    something made persistent survives its QEMU). Returns the ones removed."""
    removed = []
    for tap in taps.values():
        device = link(ip, tap)
        if device is None or (device.get("linkinfo") or {}).get("info_kind") != "tun":
            continue
        result = run_tool(ip, "link", "del", "dev", tap, error=TapError)
        if result.rc != 0:
            raise TapError(f"cannot remove the leftover tap {tap}: {stderr_tail(result)}")
        removed.append(tap)
    return removed
