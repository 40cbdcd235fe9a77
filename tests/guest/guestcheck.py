from __future__ import annotations

# Host-side helpers for the live-migration test guest (see README.md).
#   SerialTap   -- read the guest's serial line(s) from QEMU unix-socket chardevs.
#   analyze     -- heartbeat gaps, page-check and disk-ring results from tapped lines.
#   check_ring  -- validate the on-disk ring written by the guest (image not in use).
#   hash_outside_ring / prefill -- compare / seed the disk beyond the ring region.

import hashlib
import json
import os
import random
import re
import socket
import struct
import subprocess
import tempfile
import threading
import time

BLOCK = 4096
MAGIC = b"LMRING01"
_M64 = (1 << 64) - 1

Line = tuple[float, str, str]  # (time.monotonic() on arrival, label, text)


class SerialTap:
    """Tap QEMU serial sockets (`-chardev socket,path=P,server=on,wait=off`).

    One thread per (label, path): connect (retrying every retry_s, the socket may
    appear later), read lines, stamp each with time.monotonic() on arrival, and
    reconnect after EOF until stop(). Only complete lines are recorded; the first
    line after a connect may be a fragment (analyze() ignores unparsable lines).
    """

    def __init__(self, sockets, retry_s: float = 0.02):
        self.sockets = list(sockets.items() if isinstance(sockets, dict) else sockets)
        self.retry_s = retry_s
        self.lines: list[Line] = []
        self.events: list[Line] = []  # (t, label, "connected" | "disconnected")
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> SerialTap:
        for label, path in self.sockets:
            th = threading.Thread(target=self._run, args=(label, path), daemon=True,
                                  name=f"serialtap-{label}")
            th.start()
            self._threads.append(th)
        return self

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=2)
        self._threads = []

    def __enter__(self) -> SerialTap:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _record(self, store: list, label: str, texts: list[str], t: float) -> None:
        with self._cond:
            store.extend((t, label, s) for s in texts)
            self._cond.notify_all()

    def _run(self, label: str, path: str) -> None:
        while not self._stop.is_set():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                self._stop.wait(self.retry_s)
                continue
            self._record(self.events, label, ["connected"], time.monotonic())
            sock.settimeout(0.1)
            buf = b""
            try:
                while not self._stop.is_set():
                    try:
                        data = sock.recv(65536)
                    except socket.timeout:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    t = time.monotonic()
                    *done, buf = (buf + data).split(b"\n")
                    if done:
                        texts = [d.decode("utf-8", "replace").strip("\r\x00") for d in done]
                        self._record(self.lines, label, texts, t)
            finally:
                sock.close()
                self._record(self.events, label, ["disconnected"], time.monotonic())

    def snapshot(self) -> list[Line]:
        with self._cond:
            return list(self.lines)

    def wait_for(self, pattern: str, label: str | None = None, timeout: float = 30.0,
                 since: float | None = None) -> Line:
        """First record (t, label, text) with re.search(pattern, text), optionally
        restricted to a label and to t >= since; waits up to timeout seconds."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = 0
        with self._cond:
            while True:
                for rec in self.lines[checked:]:
                    if (label is None or rec[1] == label) and (since is None or rec[0] >= since) \
                            and rx.search(rec[2]):
                        return rec
                checked = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no line matching {pattern!r} (label={label}) in {timeout}s")
                self._cond.wait(left)


_HB = re.compile(r"^HB (\d+) (\d+)$")
_PC = re.compile(r"^PC (\d+) OK$")
_PCFAIL = re.compile(r"^PCFAIL \d+ ")
_RING = re.compile(r"^RING (\d+)$")
_RINGERR = re.compile(r"^RINGERR ")
_READY = re.compile(r"^LMREADY ")


def _heartbeats(lines, label: str | None = None) -> list[tuple[float, str, int, int]]:
    """[(t, label, seq, guest_ms)] in arrival order."""
    out = []
    for t, lab, text in sorted(lines, key=lambda r: r[0]):
        m = _HB.match(text.strip())
        if m and (label is None or lab == label):
            out.append((t, lab, int(m.group(1)), int(m.group(2))))
    return out


def hb_gaps(lines, label: str | None = None) -> list[tuple[float, float, float]]:
    """Consecutive-heartbeat arrival gaps [(t_prev, t_next, gap_s)] (one label or all)."""
    hb = _heartbeats(lines, label)
    return [(a[0], b[0], b[0] - a[0]) for a, b in zip(hb, hb[1:])]


def max_gap_outside(lines, t0: float, t1: float, label: str | None = None) -> float:
    """Largest heartbeat gap whose interval does not touch the window [t0, t1]."""
    return max((g for a, b, g in hb_gaps(lines, label) if b < t0 or a > t1), default=0.0)


def analyze(lines) -> dict:
    """Summarize tapped serial lines [(t, label, text)].

    Returns {
      "max_gap_s": float,  largest gap between consecutive HB lines, all labels, arrival order
      "gap_at": {"from": (label, t, seq), "to": (label, t, seq)} | None,
      "hb_by_label": {label: (count, first_seq, last_seq, first_t, last_t)},
      "hb_lost": int,      HB seqs missing in the merged stream (sum of seq jumps - 1)
      "hb_seq_errors": int, times the merged HB seq went backwards or repeated
      "max_guest_gap_ms": int, largest guest_ms step between consecutive HB lines
      "pagecheck_failures": [records], "pc_passes": {label: last OK pass},
      "last_ring_seq": int (0 if none), "ring_errors": [records],
      "ready": {label: t of first LMREADY}, "garbled": int (unparsable lines),
      "max_gap_outside": callable(t0, t1, label=None) -> float,
    }
    """
    lines = sorted(lines, key=lambda r: r[0])
    hb = _heartbeats(lines)
    res: dict = {"max_gap_s": 0.0, "gap_at": None, "hb_by_label": {}, "hb_lost": 0,
                 "hb_seq_errors": 0, "max_guest_gap_ms": 0, "pagecheck_failures": [],
                 "pc_passes": {}, "last_ring_seq": 0, "ring_errors": [], "ready": {},
                 "garbled": 0}
    for a, b in zip(hb, hb[1:]):
        if b[0] - a[0] > res["max_gap_s"]:
            res["max_gap_s"] = b[0] - a[0]
            res["gap_at"] = {"from": (a[1], a[0], a[2]), "to": (b[1], b[0], b[2])}
        if b[2] > a[2] + 1:
            res["hb_lost"] += b[2] - a[2] - 1
        elif b[2] <= a[2]:
            res["hb_seq_errors"] += 1
        res["max_guest_gap_ms"] = max(res["max_guest_gap_ms"], b[3] - a[3])
    for t, lab, seq, _guest_ms in hb:
        n, s0, _last_seq, t0, _last_t = res["hb_by_label"].get(lab, (0, seq, seq, t, t))
        res["hb_by_label"][lab] = (n + 1, s0, seq, t0, t)
    for rec in lines:
        t, lab, text = rec
        text = text.strip()
        if _HB.match(text):
            continue
        if m := _PC.match(text):
            res["pc_passes"][lab] = int(m.group(1))
        elif _PCFAIL.match(text):
            res["pagecheck_failures"].append(rec)
        elif m := _RING.match(text):
            res["last_ring_seq"] = max(res["last_ring_seq"], int(m.group(1)))
        elif _RINGERR.match(text):
            res["ring_errors"].append(rec)
        elif _READY.match(text):
            res["ready"].setdefault(lab, t)
        else:
            res["garbled"] += 1
    res["max_gap_outside"] = lambda t0, t1, label=None: max_gap_outside(lines, t0, t1, label)
    return res


# ---- disk image checks (the image must not be in use, or its QEMU paused and force_share given) ----

def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & _M64
    return h


def _splitmix64(x: int) -> tuple[int, int]:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return x, z ^ (z >> 31)


def ring_fill(seq: int) -> bytes:
    """Bytes 32..4095 of the ring block for seq (same as workload.c)."""
    words, x = [], seq
    for _word in range(4):
        x, w = _splitmix64(x)
        words.append(w)
    return struct.pack("<4Q", *words) * ((BLOCK - 32) // 32)


def _xorshift64s(x: int) -> tuple[int, int]:
    x ^= x >> 12
    x ^= (x << 25) & _M64
    x ^= x >> 27
    return x, (x * 0x2545F4914F6CDD1D) & _M64


def page_fill(pass_: int, index: int, fill: str = "words", size: int = BLOCK) -> bytes:
    """The first `size` bytes of page `index` of the working set after page-check pass `pass_` (as workload.c
    writes them with lm.fill=words or lm.fill=random)."""
    value = ((pass_ << 32) ^ index ^ 0x5A00000000000000) & _M64
    if fill == "words":
        page = struct.pack("<Q", value) + bytes(BLOCK - 16) + struct.pack("<Q", value ^ _M64)
        return page[:size]
    _x, state = _splitmix64(value)
    state = state or 1
    words = []
    for _word in range(-(-size // 8)):
        state, w = _xorshift64s(state)
        words.append(w)
    return struct.pack(f"<{len(words)}Q", *words)[:size]


def ring_block(seq: int, slot: int) -> bytes:
    fill = ring_fill(seq)
    return MAGIC + struct.pack("<3Q", seq, slot, _fnv1a64(fill)) + fill


def check_ring(image_path: str, ring_blocks: int, min_seq: int, fmt: str = "qcow2", force_share: bool = False) -> dict:
    """Validate the guest's disk ring in the first ring_blocks*4096 bytes.

    Returns {"ok": bool, "max_seq": int, "problems": [str], "notes": [str],
             "blocks": int (valid blocks found)}.
    ok means: every non-zero block is a valid ring block for its slot, max_seq >= min_seq
    (no acknowledged write lost) and seqs max(1, max_seq-ring_blocks+1)..max_seq are all
    present in their slots. A corrupt block in the slot of max_seq+1 (the write that may
    have been in flight, never acknowledged) is only noted, provided max_seq >= min_seq.
    """
    with tempfile.TemporaryDirectory() as td:
        raw = os.path.join(td, "ring.raw")
        _run("qemu-img", "dd", *(["-U"] if force_share else []), "-f", fmt, "-O", "raw", f"bs={BLOCK}",
             f"count={ring_blocks}",
             f"if={image_path}", f"of={raw}")
        with open(raw, "rb") as f:
            data = f.read()
    problems: list[str] = []
    bad_slots: dict[int, str] = {}
    seq_at: dict[int, int] = {}
    zero = bytes(BLOCK)
    for slot in range(ring_blocks):
        blk = data[slot * BLOCK:(slot + 1) * BLOCK]
        if blk == zero[:len(blk)]:
            continue
        if len(blk) < BLOCK or blk[:8] != MAGIC:
            bad_slots[slot] = "bad magic"
            continue
        seq, bslot, h = struct.unpack_from("<3Q", blk, 8)
        if bslot != slot or seq < 1 or (seq - 1) % ring_blocks != slot:
            bad_slots[slot] = f"seq {seq} slot field {bslot} does not belong here"
        elif blk[32:] != ring_fill(seq) or h != _fnv1a64(blk[32:]):
            bad_slots[slot] = f"seq {seq} bad fill/hash"
        else:
            seq_at[slot] = seq
    max_seq = max(seq_at.values(), default=0)
    inflight_slot = max_seq % ring_blocks  # slot of max_seq + 1
    notes: list[str] = []
    for slot, why in sorted(bad_slots.items()):
        if slot == inflight_slot and max_seq >= min_seq:
            notes.append(f"slot {slot}: {why} (slot of unacknowledged seq {max_seq + 1})")
        else:
            problems.append(f"slot {slot}: {why}")
    if max_seq < min_seq:
        problems.append(f"max_seq {max_seq} < min_seq {min_seq}: acknowledged writes lost")
    holes = [s for s in range(max(1, max_seq - ring_blocks + 1), max_seq + 1)
             if seq_at.get((s - 1) % ring_blocks) != s and (s - 1) % ring_blocks not in bad_slots]
    if holes:
        problems.append(f"{len(holes)} seqs missing from their slots, first {holes[:10]}")
    return {"ok": not problems, "max_seq": max_seq, "problems": problems, "notes": notes,
            "blocks": len(seq_at)}


def _virtual_size(image_path: str, fmt: str) -> int:
    return json.loads(_run("qemu-img", "info", "-f", fmt, "--output=json", image_path))["virtual-size"]


def hash_outside_ring(image_path: str, ring_blocks: int, fmt: str = "qcow2", force_share: bool = False) -> str:
    """sha256 hex of the virtual disk content from byte ring_blocks*4096 to the end."""
    start = ring_blocks * BLOCK
    zeros = memoryview(bytes(1 << 22))
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as td:
        raw = os.path.join(td, "disk.raw")
        _run("qemu-img", "convert", *(["-U"] if force_share else []), "-f", fmt, "-O", "raw", image_path, raw)
        with open(raw, "rb") as f:
            fd = f.fileno()
            size, pos = os.fstat(fd).st_size, start
            while pos < size:
                try:
                    data = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole remains
                    data = size
                while pos < data:  # hole: hash zeros without reading
                    n = min(data - pos, len(zeros))
                    h.update(zeros[:n])
                    pos += n
                if pos >= size:
                    break
                end = os.lseek(fd, pos, os.SEEK_HOLE)
                f.seek(pos)
                while pos < end:
                    chunk = f.read(min(end - pos, 1 << 22))
                    if not chunk:
                        raise IOError(f"short read at {pos} in {raw}")
                    h.update(chunk)
                    pos += len(chunk)
    return h.hexdigest()


def prefill(image_path: str, ring_blocks: int, seed, fmt: str = "qcow2",
            chunks: int = 8, chunk_size: int = 1 << 20) -> list[tuple[int, int]]:
    """Write `chunks` deterministic pseudo-random chunks (from seed) spread over the
    disk beyond the ring region. Returns [(offset, length)] written."""
    size = _virtual_size(image_path, fmt)
    start = -(-ring_blocks * BLOCK // 65536) * 65536
    span = size - start - chunk_size
    if span < 0:
        raise ValueError(f"image too small for prefill beyond ring: {size} bytes")
    rng = random.Random(f"lm-prefill-{seed}")
    written = []
    cmds = []
    with tempfile.TemporaryDirectory() as td:
        for k in range(chunks):
            off = start + (span * k // max(1, chunks - 1)) // BLOCK * BLOCK
            path = os.path.join(td, f"chunk{k}")
            with open(path, "wb") as f:
                f.write(rng.randbytes(chunk_size))
            cmds += ["-c", f"write -q -s {path} {off} {chunk_size}"]
            written.append((off, chunk_size))
        _run("qemu-io", "-f", fmt, *cmds, image_path)
    return written
