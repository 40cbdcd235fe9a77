# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What QEMU's migration stream last achieved from this host to one target: the ceiling the prediction uses where
QEMU itself (its CPU, TLS, TCG) sends slower than the link test measures.

Private to the livemig.qemu collection. The source records each completed live move; qemu_migration_probe recalls
the figure before the next one. One small JSON file per stream in `<run_dir>/.livemig-streams/`, keyed by the
target's migration address, the transport (tls|tcp), the multifd channels (0: a single stream) and the multifd
compression, all derived from the capabilities and parameters the move migrates with (stream_key).

A stream that reached LINK_BOUND of the rate it was allowed (the link rate measured before that move, or the bandwidth
cap when lower) was held back by the link or the cap and says nothing about this host's ceiling: it is kept as the
`last` entry only. A host-bound stream is the `ceiling` too. A later limited move keeps that ceiling unless it went
faster, which shows the ceiling no longer holds. Entries older than MAX_AGE_S are ignored; a file that cannot be read
is replaced by the next record.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files

CACHE_DIR = ".livemig-streams"
FORMAT = 1
TRANSPORTS = ("tls", "tcp")
LINK_BOUND = 0.85
MAX_AGE_S = 30 * 86400
QEMU_MULTIFD_CHANNELS = 2  # QEMU's multifd-channels when multifd is on and the parameter is not set
# A migration that moved less, or for less time, says more about its start-up (connection, first sync) than about
# the stream's rate.
MIN_MOVED_BYTES = 16 << 20
MIN_MOVING_MS = 100
UNSAFE = re.compile(r"[^A-Za-z0-9]+")  # no dots either: a name never starts with one, nor holds ".."


@dataclass(frozen=True)
class StreamKey:
    """One stream from this host: build it with stream_key() or migration_key(), which derive and normalise the
    parts."""
    address: str
    transport: str
    multifd_channels: int
    multifd_compression: str

    def file_name(self) -> str:
        """Readable, safe in a path, and unique: two addresses that sanitise alike differ in the digest."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        readable = "-".join(UNSAFE.sub("_", str(part))[:64] for part in asdict(self).values())
        return f"{readable}-{digest}.json"


def stream_key(address: str, transport: str, capabilities: Collection[str] = (),
               parameters: dict[str, Any] | None = None) -> StreamKey:
    """The key of the stream to `address` (an IPv6 address with or without brackets) that a migration with these
    capabilities and parameters opens, as qemu_migrate gets them: with multifd, its channels (QEMU's default when
    the parameters set none) and its compression; without it a single stream, whose compression counts as none."""
    host = (address or "").strip().strip("[]").lower()
    if not host:
        raise ValueError("a stream needs the target's migration address")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass  # a host name, kept as a name
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if "multifd" not in capabilities:
        return StreamKey(host, transport, 0, "none")
    parameters = parameters or {}
    return StreamKey(host, transport, _channels(parameters.get("multifd-channels", QEMU_MULTIFD_CHANNELS)),
                     _compression(parameters.get("multifd-compression", "none")))


def _channels(value: Any) -> int:
    """multifd-channels as a number; a templated value arrives as a string of digits."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"parameters multifd-channels must be a whole number of at least 1, got {value!r}")
    return value


def _compression(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"parameters multifd-compression must be a name such as none, zlib or zstd, got {value!r}")
    return value.strip().lower()


def migration_key(uri: str, tls: bool, capabilities: Collection[str], parameters: dict[str, Any]) -> StreamKey | None:
    """The key of the stream a `migrate` to `uri` opens with these capabilities and parameters; None for a URI
    other than tcp:HOST:PORT (a file, a command, a socket on this host: no network stream to keep a rate of)."""
    if not uri.startswith("tcp:") or ":" not in uri[4:]:
        return None
    return stream_key(uri[4:].rsplit(":", 1)[0], "tls" if tls else "tcp", capabilities, parameters)


def achieved_rate(info: Any) -> float | None:
    """Bytes/s QEMU's stream carried while the guest ran, from the final query-migrate answer of a completed
    migration; None when a figure is missing or the figures do not add up.

    `ram.transferred` already counts the multifd channels' bytes (QEMU 10.0: migration_transferred_bytes(), the
    main channel plus `multifd-bytes`; 7.2 adds them to the same counter), so they are not added again. The guest
    ran for total-time minus setup-time minus downtime; the downtime also holds the wait for the disk mirrors at
    the pause before the switchover, so the bytes sent in it (`downtime-bytes`) are left out too. With multifd,
    QEMU counts only the main channel's bytes there: what the channels sent while the guest stood still is
    counted as sent while it ran.
    """
    if not isinstance(info, dict) or info.get("status") != "completed" or not isinstance(info.get("ram"), dict):
        return None
    figures = (info["ram"].get("transferred"), info["ram"].get("downtime-bytes"), info.get("total-time"),
               info.get("setup-time"), info.get("downtime"))
    if not all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in figures):
        return None
    transferred, downtime_bytes, total_ms, setup_ms, downtime_ms = figures
    moved, moving_ms = transferred - downtime_bytes, total_ms - setup_ms - downtime_ms
    if moved < MIN_MOVED_BYTES or moving_ms < MIN_MOVING_MS:
        return None
    return moved / moving_ms * 1000


def _path(run_dir: str, key: StreamKey) -> str:
    return os.path.join(run_dir, CACHE_DIR, key.file_name())


def _read(run_dir: str, key: StreamKey) -> dict[str, Any]:
    """The file's entries {ceiling, last}; empty when it is missing, corrupt or of another key or format."""
    try:
        with open(_path(run_dir, key), encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict) or content.get("format") != FORMAT or content.get("key") != asdict(key):
        return {}
    return {slot: content[slot] for slot in ("ceiling", "last") if _is_entry(content.get(slot))}


def _is_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and all(isinstance(entry.get(name), (int, float)) and entry[name] > 0
                                           for name in ("stream_rate", "when"))


def record(run_dir: str, key: StreamKey | None, stream_rate: float | None, link_rate: float | None,
           migration_id: str | None, when: float, cap: float = 0.0) -> dict[str, Any] | None:
    """Keep what a completed move's stream achieved (achieved_rate) beside the link rate measured before it and the
    bandwidth cap it ran under (0: none). Returns the entry kept; None when there is nothing to keep (no key, no
    stream rate, or no link rate to tell a host-bound stream from a link-bound one) or it cannot be written, which
    only costs the next prediction its ceiling."""
    if not run_dir or key is None or not stream_rate or stream_rate <= 0 or not link_rate or link_rate <= 0:
        return None
    allowed = min(link_rate, cap) if cap and cap > 0 else link_rate
    bound = "host" if stream_rate < LINK_BOUND * allowed else "link" if allowed == link_rate else "cap"
    entry = {"stream_rate": round(stream_rate), "bound": bound, "link_rate": round(link_rate),
             "cap": round(cap or 0), "migration_id": migration_id, "when": when}
    kept = entry if bound == "host" else _read(run_dir, key).get("ceiling")
    if kept is not None and kept["stream_rate"] < stream_rate:
        kept = None  # a limited stream went faster than the ceiling: it was none
    content = {"format": FORMAT, "key": asdict(key), "ceiling": kept, "last": entry}
    path = _path(run_dir, key)
    try:
        _files.private_dir(run_dir, os.path.dirname(path))
        _files.atomic_write(path, json.dumps(content), durable=False)
    except (OSError, _files.PrivacyError):
        return None
    return entry


def recall(run_dir: str | None, key: StreamKey, now: float | None = None) -> dict[str, Any] | None:
    """The entry the prediction goes by: the ceiling, else the last (limited) move, each only if younger than
    MAX_AGE_S; None when there is neither."""
    if not run_dir:
        return None
    now = time.time() if now is None else now
    entries = _read(run_dir, key)
    for slot in ("ceiling", "last"):
        entry = entries.get(slot)
        if entry is not None and abs(now - entry["when"]) <= MAX_AGE_S:
            return entry
    return None


def ceiling(entry: dict[str, Any] | None) -> float | None:
    """The stream rate an entry sets as this host's ceiling: only a host-bound one does."""
    return float(entry["stream_rate"]) if entry and entry.get("bound") == "host" else None
