# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a live move of a VM that runs on this host would carry, measured before the move: how fast the guest dirties
its RAM and writes its local disks, how much of its RAM was ever touched, how much of its disks is allocated, and,
against the target's listener, what the migration network carries (`_linktest`); beside them the rate QEMU's own
stream last reached to that target (`_streamcache`). The qemu_migration_probe module's state=measured.

Private to the livemig.qemu collection. Read-only for the VM. A dirty rate, a resident size or a link test that
cannot be measured is reported as None with the reason beside it, not as a failure: the planner then says why it
has no prediction. QEMU reports dirty rates in MiB/s (it shifts bytes by 20); they are returned in bytes/s.
"""
from __future__ import annotations

import math
import re
import time
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _linktest, _streamcache, _tlsqemu, _vmhost, _vmspec
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._paths import device_id, file_node, node_name
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession

MIB, GIB = 1 << 20, 1 << 30
MAX_SECONDS = 60.0  # the longest window QEMU's calc-dirty-rate takes
MIN_CALC_SECONDS = 0.05
MIN_LINK_SECONDS = 0.1
CALC_TIME_UNIT = (8, 2)  # the first QEMU whose calc-dirty-rate takes milliseconds; before, whole seconds
RESULT_MARGIN = 10.0  # seconds beyond the window to wait for QEMU's result
POLL = 0.05
# Page sampling hashes `sample-pages` pages per GiB (QEMU: 128 to 4096, default 512). A small VM gets more per GiB,
# so that at least a few hundred of its pages are looked at and a small working set is not missed by chance.
SAMPLED_PAGES, SAMPLE_PAGES_RANGE = 4096, (512, 4096)
KVM_MODES = ("dirty-ring", "dirty-bitmap", "page-sampling")  # dirty-ring only works with a dirty ring, -bitmap without
MEASURABLE = ("running", "paused")
MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
SMAPS_FIELD = re.compile(r"^(Size|Rss|Swap):\s+(\d+) kB")
SOURCE_KEYS = ("migration_id", "when", "bound", "link_rate", "cap")
LINK_KEYS = ("link_rate", "link_bytes", "link_seconds", "link_sender_bytes", "link_sender_seconds", "link_refused")


def measured(task: Any) -> dict[str, Any]:
    """The qemu_migration_probe module's state=measured."""
    params = task.params
    for option, low in (("dirty_rate_seconds", MIN_CALC_SECONDS), ("link_seconds", MIN_LINK_SECONDS)):
        if not low <= params[option] <= MAX_SECONDS:
            raise LivemigError(f"{option} must be between {low:g} and {MAX_SECONDS:g} seconds, got {params[option]}")
    peer = _peer(params)
    stream = peer_stream_key(params)
    tls = _tlsqemu.client(params)
    paths = task.paths
    pid = _vmhost.running_pid(paths)
    if pid is None:
        raise LivemigError(f"VM {paths.vm} does not run on this host (no live QEMU in {paths.pidfile}): start it "
                           "(livemig.qemu.qemu_vm state=running), or measure on the host that runs it")
    with task.qmp(paths.qmp) as session:
        status = session.execute("query-status")["status"]
        if status not in MEASURABLE:
            raise LivemigError(f"VM {paths.vm} is {status} on this host, neither running nor paused: measure it on "
                               "the host that runs it, or wait until its migration has ended")
        measurements = measure_vm(session, pid, measured_disks(params["disks"]), params["dirty_rate_seconds"])
    measurements.update(_link(peer, params["link_seconds"], tls))
    measurements.update(_stream_ceiling(paths.run_dir, stream))
    return {"changed": False, "status": status, "measurements": measurements,
            "msg": f"VM {paths.vm}: {summary(measurements)}"}


def _peer(params: dict[str, Any]) -> tuple[str, int, str] | None:
    """The listener to test the link with; None when none is given (port 0: the listener ran in check mode)."""
    address, port, token = (params["peer_address"] or "").strip("[]"), params["peer_port"] or 0, params["token"]
    if not 0 <= port <= 65535:
        raise LivemigError(f"peer_port must be a TCP port, got {port}")
    if not address or not port:
        return None
    if not _linktest.TOKEN.fullmatch(token or ""):
        raise LivemigError("token must be the 64 hexadecimal digits state=listening returned on the target")
    return address, port, token


def peer_stream_key(params: dict[str, Any]) -> _streamcache.StreamKey | None:
    """The key of the stream a move to peer_address with these capabilities and parameters would open; None without
    a peer address. The transport is TLS when tls_dir is given, unless `transport` says otherwise."""
    if not (params["peer_address"] or "").strip("[]"):
        return None
    transport = params["transport"] or ("tls" if params["tls_dir"] else "tcp")
    try:
        return _streamcache.stream_key(params["peer_address"], transport, params["capabilities"], params["parameters"])
    except ValueError as exc:
        raise LivemigError(str(exc)) from None


def _stream_ceiling(run_dir: str, key: _streamcache.StreamKey | None) -> dict[str, Any]:
    """{stream_rate, stream_rate_source}: the ceiling of QEMU's stream to this target, from the last move that this
    host recorded (only a host-bound stream sets one), and where it comes from."""
    entry = _streamcache.recall(run_dir, key) if key is not None else None
    source = None if entry is None else {name: entry.get(name) for name in SOURCE_KEYS}
    return {"stream_rate": _streamcache.ceiling(entry), "stream_rate_source": source}


def _link(peer: tuple[str, int, str] | None, seconds: float, tls: _tlsqemu.Client | None) -> dict[str, Any]:
    unmeasured = dict.fromkeys(LINK_KEYS)
    if peer is None:
        return {**unmeasured, "link_error": "no listener to test the link with: give peer_address and peer_port, "
                                            "which state=listening returns on the target (it starts none in check "
                                            "mode)"}
    try:
        return {**_linktest.measure_link(*peer, seconds, tls), "link_error": None}
    except _linktest.LinkTestError as exc:
        return {**unmeasured, "link_error": str(exc)}


def measure_vm(session: QMPSession, pid: int, disks: list[str], seconds: float) -> dict[str, Any]:
    """Dirty rate and disk writes over one window, then the RAM and the disks' allocation."""
    ram_bytes, backends = ram_sizes(session)
    before = written(session, disks)
    started = time.monotonic()
    dirty = dirty_rate(session, seconds, ram_bytes)
    # The disk writes are counted over the whole window, also when the dirty rate could not be measured.
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    elapsed = time.monotonic() - started
    after = written(session, disks)
    resident, resident_error = ram_resident(pid, backends)
    allocated = allocated_bytes(session, disks)
    return {**dirty,
            "disk_write_rate": round(sum(after[disk] - before[disk] for disk in disks) / elapsed),
            "disk_write_seconds": round(elapsed, 3),
            "ram_bytes": ram_bytes, "ram_resident_bytes": resident, "ram_resident_error": resident_error,
            "disk_bytes": sum(allocated.values()), "disk_bytes_per_disk": allocated}


# -- RAM ----------------------------------------------------------------------------------------------------------

def dirty_rate(session: QMPSession, seconds: float, ram_bytes: int) -> dict[str, Any]:
    """calc-dirty-rate over `seconds`, in the first mode this VM's accelerator allows: page sampling under TCG; under
    KVM the dirty ring if the VM has one, else the dirty bitmap, else page sampling."""
    version = session.execute("query-version")["qemu"]
    if (version["major"], version["minor"]) >= CALC_TIME_UNIT:
        timing, used = {"calc-time": round(seconds * 1000), "calc-time-unit": "millisecond"}, round(seconds, 3)
    else:
        timing = {"calc-time": max(1, round(seconds))}
        used = float(timing["calc-time"])
    modes = KVM_MODES if session.execute("query-kvm")["enabled"] else ("page-sampling",)
    errors = []
    for mode in modes:
        arguments = {**timing, "mode": mode}
        if mode == "page-sampling":
            arguments["sample-pages"] = sample_pages(ram_bytes)
        try:
            session.execute("calc-dirty-rate", arguments)
            rate = _result(session, time.monotonic() + used + RESULT_MARGIN)
        except QMPError as exc:
            errors.append(f"{mode}: {exc}")
            continue
        return {"dirty_rate": rate, "dirty_rate_mode": mode, "dirty_rate_seconds": used, "dirty_rate_error": None}
    return {"dirty_rate": None, "dirty_rate_mode": None, "dirty_rate_seconds": used,
            "dirty_rate_error": f"QEMU could not measure the dirty rate: {'; '.join(errors)}"}


def sample_pages(ram_bytes: int) -> int:
    low, high = SAMPLE_PAGES_RANGE
    return min(high, max(low, math.ceil(SAMPLED_PAGES * GIB / max(ram_bytes, 1))))


def _result(session: QMPSession, deadline: float) -> int:
    """The measured rate in bytes/s, once QEMU has it."""
    while (info := session.execute("query-dirty-rate"))["status"] != "measured":
        if time.monotonic() > deadline:
            raise QMPError(f"no result while {info['status']}", "query-dirty-rate")
        time.sleep(POLL)
    if info["dirty-rate"] < 0:
        raise QMPError("QEMU reports no rate (-1)", "query-dirty-rate")
    return info["dirty-rate"] * MIB


def ram_sizes(session: QMPSession) -> tuple[int, list[int]]:
    """The guest's RAM in bytes (base and hot-plugged), and the size of each memory backend that holds it."""
    sizes = session.execute("query-memory-size-summary")
    ram_bytes = sizes["base-memory"] + sizes.get("plugged-memory", 0)
    return ram_bytes, [backend["size"] for backend in session.execute("query-memdev")] or [ram_bytes]


def ram_resident(pid: int, backends: list[int]) -> tuple[int | None, str | None]:
    """Bytes of the guest's RAM that QEMU's process ever touched (resident or swapped out), from the mappings of the
    memory backends in /proc/<pid>/smaps: for each backend, the smallest mapping at least its size (the mapping of
    that size, unless the kernel merged it with a neighbour). None, and why, when they cannot be read."""
    try:
        mappings = _mappings(pid)
    except OSError as exc:
        return None, f"cannot read /proc/{pid}/smaps: {exc.strerror or exc}"
    touched = 0
    for size in sorted(backends, reverse=True):
        fitting = [mapping for mapping in mappings if mapping[0] >= size]
        if not fitting:
            return None, f"no mapping of QEMU (pid {pid}) is as large as its memory backend of {size} bytes"
        chosen = min(fitting)
        mappings.remove(chosen)
        touched += min(chosen[1], size)
    return touched, None


def _mappings(pid: int) -> list[list[int]]:
    """[size, resident + swapped bytes] of each mapping of the process."""
    mappings: list[list[int]] = []
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if MAPPING.match(line):
                mappings.append([0, 0])
            elif mappings and (field := SMAPS_FIELD.match(line)):
                mappings[-1][0 if field[1] == "Size" else 1] += int(field[2]) * 1024
    return mappings


# -- disks --------------------------------------------------------------------------------------------------------

def measured_disks(disks: list[str]) -> list[str]:
    """The disks worth measuring: all but UEFI's variable store, a pflash of a few MiB that no device's block stats
    count."""
    return [disk for disk in disks if disk != _vmspec.NVRAM]


def written(session: QMPSession, disks: list[str]) -> dict[str, int]:
    """Bytes the guest wrote to each disk since QEMU started, as its device counted them (wr_bytes). Found by the
    device, whose node may be under a filter node while a mirror runs."""
    stats = {_device(entry): entry["stats"]["wr_bytes"] for entry in session.execute("query-blockstats")}
    missing = [disk for disk in disks if device_id(disk) not in stats]
    if missing:
        raise LivemigError(f"the VM has no disk {', '.join(missing)} (no device "
                           f"{', '.join(device_id(disk) for disk in missing)}): give the names of its local disks, "
                           "as its spec names them")
    return {disk: stats[device_id(disk)] for disk in disks}


def _device(entry: dict[str, Any]) -> str | None:
    """The id of the device of a blockstats entry, from its path /machine/peripheral/<id>/..."""
    parts = (entry.get("qdev") or "").split("/")
    return parts[3] if parts[1:3] == ["machine", "peripheral"] and len(parts) > 3 else None


def allocated_bytes(session: QMPSession, disks: list[str]) -> dict[str, int]:
    """Bytes each disk's image takes on this host (what a mirror sends at most); a block device's whole size."""
    nodes = {node["node-name"]: node for node in session.execute("query-named-block-nodes", {"flat": True})}
    allocated = {}
    for disk in disks:
        image = nodes[node_name(disk)]["image"]
        device = nodes.get(file_node(disk), {}).get("drv") == "host_device"
        allocated[disk] = image["virtual-size"] if device else image.get("actual-size", image["virtual-size"])
    return allocated


# -- the summary --------------------------------------------------------------------------------------------------

def summary(measurements: dict[str, Any]) -> str:
    """The measurements in one line for a person."""
    dirty = measurements["dirty_rate"]
    parts = [f"dirties {_mib(dirty)}/s ({measurements['dirty_rate_mode']})" if dirty is not None
             else "dirty rate unknown", f"writes {_mib(measurements['disk_write_rate'])}/s to its disks",
             f"RAM {_mib(measurements['ram_bytes'])}"
             + (f" ({_mib(measurements['ram_resident_bytes'])} touched)"
                if measurements["ram_resident_bytes"] is not None else ""),
             f"disks {_mib(measurements['disk_bytes'])} allocated",
             f"link {_mib(measurements['link_rate'])}/s" if measurements["link_rate"] is not None
             else f"link not measured: {measurements['link_error']}"]
    if measurements.get("stream_rate") is not None:
        parts.append(f"QEMU's stream last reached {_mib(measurements['stream_rate'])}/s to this target")
    return ", ".join(parts)


def _mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"
