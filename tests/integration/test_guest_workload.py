"""The test guest's workload (tests/guest/workload.c): booted under TCG, its working set holds what the page check
says it does, incompressible with lm.fill=random and mostly zeros with lm.fill=words; run as a normal program,
the random fill's check catches one changed byte in the middle of a page."""
from __future__ import annotations

import os
import re
import subprocess
import time
import zlib

import pytest
from conftest import REPO_ROOT, guestcheck

from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession

GUEST_DIR = os.path.join(REPO_ROOT, "tests", "guest")
WSS_MB = 16
PAGES = (WSS_MB << 20) // guestcheck.BLOCK
MEMORY_MB = 128
KNOBS = f"lm.wss_mb={WSS_MB} lm.dirty_mbps=8 lm.writes_ps=0"


@pytest.fixture
def qemu(tmp_path):
    """Start QEMU under TCG on this machine (no lab host) with a QMP socket; the test's processes end with it."""
    started = []

    def start(*extra: str):
        qmp = str(tmp_path / f"qmp{len(started)}.sock")
        process = subprocess.Popen(["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
                                    "-accel", "tcg", "-qmp", f"unix:{qmp},server=on,wait=off", *extra],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(process)
        deadline = time.monotonic() + 10
        while not os.path.exists(qmp):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "QEMU did not create its QMP socket"
            time.sleep(0.01)
        return qmp

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


@pytest.fixture(scope="module")
def tiny_guest() -> dict[str, str]:
    """The kernel and initrd of tests/guest/build.sh (which rebuilds them only when workload.c changed)."""
    subprocess.run([os.path.join(GUEST_DIR, "build.sh")], check=True, capture_output=True)
    out = os.path.join(GUEST_DIR, "out")
    return {"kernel": os.path.join(out, "vmlinuz"), "initrd": os.path.join(out, "initrd.img")}


def working_set(dump: bytes, fill: str, first_pass: int) -> dict[int, tuple[int, bytes]]:
    """{page index: (pass, page)} for the pages of a guest RAM dump whose first word is the one page-check pass
    first_pass..first_pass+3 writes at that index."""
    first_words = {guestcheck.page_fill(p, i, fill, 8): (p, i)
                   for p in range(first_pass, first_pass + 4) for i in range(PAGES)}
    found = {}
    for offset in range(0, len(dump), guestcheck.BLOCK):
        if hit := first_words.get(dump[offset:offset + 8]):
            found[hit[1]] = (hit[0], dump[offset:offset + guestcheck.BLOCK])
    return found


@pytest.mark.parametrize("fill, ratio", [pytest.param("random", (0.99, 1.01), id="random"),
                                         pytest.param("words", (0.0, 0.02), id="words")])
def test_the_working_set_in_guest_ram_is_random_only_with_random_fill(qemu, tmp_path, tiny_guest, fill, ratio):
    serial = str(tmp_path / "serial.sock")
    qmp = qemu("-machine", "q35", "-cpu", "qemu64", "-m", str(MEMORY_MB), "-smp", "1",
               "-kernel", tiny_guest["kernel"], "-initrd", tiny_guest["initrd"],
               "-append", f"console=ttyS0 quiet loglevel=0 {KNOBS} lm.fill={fill}",
               "-chardev", f"socket,id=s0,path={serial},server=on,wait=off", "-serial", "chardev:s0")
    with guestcheck.SerialTap([("vm1", serial)]) as tap:
        ready = tap.wait_for(r"^LMREADY ", timeout=30)
        # Random fill reports pass n once pass n+1 has checked every page before overwriting it.
        first_ok = tap.wait_for(r"^PC \d+ OK$", timeout=15)
        with QMPSession(qmp) as session:
            session.execute("stop")
            session.execute("pmemsave", {"val": 0, "size": MEMORY_MB << 20, "filename": str(tmp_path / "ram")})
        lines = tap.snapshot()
    assert ready[2].endswith(f" fill={fill}"), ready
    summary = guestcheck.analyze(lines)
    assert summary["pagecheck_failures"] == [] and summary["pc_passes"]["vm1"] >= 1, summary
    beats = summary["hb_by_label"]["vm1"][0]
    assert beats >= 100 and summary["hb_seq_errors"] == 0 and summary["max_gap_s"] < 1.0, summary
    with open(tmp_path / "ram", "rb") as handle:
        dump = handle.read()
    found = working_set(dump, fill, int(first_ok[2].split()[1]))
    assert sorted(found) == list(range(PAGES)), f"{len(found)} of {PAGES} working-set pages found in guest RAM"
    for index in range(0, PAGES, PAGES // 32):
        pass_, page = found[index]
        assert page == guestcheck.page_fill(pass_, index, fill), f"page {index} of pass {pass_}"
    region = b"".join(page for _pass, page in found.values())
    assert ratio[0] <= len(zlib.compress(region, 6)) / len(region) <= ratio[1]


def test_random_fill_check_catches_one_changed_byte_in_a_page(tmp_path):
    """The workload as a normal process: one byte in the middle of two pages changed through /proc/<pid>/mem
    while their pass's content waits for the next pass to check it."""
    binary, output = str(tmp_path / "lm-workload"), tmp_path / "output"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", binary, os.path.join(GUEST_DIR, "workload.c")], check=True)
    with open(output, "wb") as handle:
        process = subprocess.Popen([binary, *KNOBS.split(), "lm.fill=random", "lm.hb_ms=1000"], stdout=handle)
    try:
        wait_for_line(output, "PC 1 OK")  # pass 2 is written: pass 3 checks page i about i/2048 s from now
        start = working_set_address(process.pid)
        with open(f"/proc/{process.pid}/mem", "r+b", buffering=0) as mem:
            for index in (3000, 4000):
                mem.seek(start + index * guestcheck.BLOCK + 2000)
                byte = mem.read(1)[0]
                mem.seek(start + index * guestcheck.BLOCK + 2000)
                mem.write(bytes([byte ^ 0xFF]))
        lines = wait_for_line(output, "PC 3 OK")
    finally:
        process.kill()
        process.wait(10)
    failures = [line for line in lines if line.startswith("PCFAIL")]
    assert [re.sub(r" want=\w+ got=\w+", "", line) for line in failures] == [
        "PCFAIL 2 page=3000 word=250", "PCFAIL 2 page=4000 word=250", "PCFAIL 2 total=2"], lines
    for line, index in zip(failures, (3000, 4000)):
        want, got = (int(value, 16) for value in re.search(r"want=(\w+) got=(\w+)", line).groups())
        assert want == int.from_bytes(guestcheck.page_fill(2, index, "random")[2000:2008], "little"), line
        assert want ^ got == 0xFF << 8 * (2000 % 8), line
    assert lines.index("PC 3 OK") > lines.index("PCFAIL 2 total=2"), lines


def wait_for_line(path, line: str, timeout: float = 10.0) -> list[str]:
    """The lines of the file once one of them is `line`."""
    deadline = time.monotonic() + timeout
    while line not in (lines := path.read_text(encoding="ascii").splitlines()):
        assert time.monotonic() < deadline, f"no {line!r} in {timeout}s: {lines}"
        time.sleep(0.05)
    return lines


def working_set_address(pid: int) -> int:
    """Start of the process's one anonymous read-write mapping of exactly the working set's size."""
    with open(f"/proc/{pid}/maps", encoding="ascii") as handle:
        ranges = [[int(end, 16) for end in fields[0].split("-")] for fields in map(str.split, handle)
                  if len(fields) == 5 and fields[1] == "rw-p"]
    starts = [start for start, end in ranges if end - start == WSS_MB << 20]
    assert len(starts) == 1, ranges
    return starts[0]
