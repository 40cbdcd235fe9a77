"""The stream rate from a real migration's final query-migrate answer, QEMU 10.0 and 7.2, single stream and multifd:
it agrees with the rate QEMU itself reports for the stream (ram.mbps)."""
from __future__ import annotations

import os
import time

import conftest
import pytest

from ansible_collections.livemig.qemu.plugins.module_utils._streamcache import achieved_rate
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession

MB = 1 << 20
RAM_MB = 256
DOWNTIME_LIMIT_MS = 50  # QEMU's 300 ms would leave a third of this RAM for the downtime
BANDWIDTH = 256 * MB  # a steady stream: unlimited loopback swings by 15 % between QEMU's 100 ms windows


def migrate(qemu, tmp_path, binary, channels):
    """Move RAM_MB of random RAM over loopback at BANDWIDTH; QEMU's final answer."""
    ram_file = tmp_path / "ram"
    if not ram_file.exists():
        ram_file.write_bytes(os.urandom(RAM_MB * MB))
    machine = ["-machine", "pc,memory-backend=ram", "-m", str(RAM_MB)]
    source = qemu("source", *machine, "-object",
                  f"memory-backend-file,id=ram,size={RAM_MB}M,mem-path={ram_file},share=off", binary=binary)
    target = qemu("target", *machine, "-object", f"memory-backend-ram,id=ram,size={RAM_MB}M", "-incoming", "defer",
                  binary=binary)
    with QMPSession(source.qmp, connect_timeout=5) as src, QMPSession(target.qmp, connect_timeout=5) as tgt:
        for session in (src, tgt):
            if channels:
                multifd = [{"capability": "multifd", "state": True}]
                session.execute("migrate-set-capabilities", {"capabilities": multifd})
                session.execute("migrate-set-parameters", {"multifd-channels": channels})
        src.execute("migrate-set-parameters", {"max-bandwidth": BANDWIDTH, "downtime-limit": DOWNTIME_LIMIT_MS})
        tgt.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = tgt.execute("query-migrate")["socket-address"][0]["port"]
        src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        deadline = time.monotonic() + 60
        while (info := src.execute("query-migrate"))["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, info
            time.sleep(0.02)
    source.kill()
    target.kill()
    return info


@pytest.mark.parametrize("channels", [0, 2])
@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_the_rate_of_a_real_migration_agrees_with_qemus_own(qemu, tmp_path, version, channels):
    binary = conftest.QEMU_72 if version == "7.2" else None
    if binary and not os.access(binary, os.X_OK):
        pytest.fail(f"QEMU 7.2 is missing at {binary}: run scripts/setup.sh")
    info = migrate(qemu, tmp_path, binary, channels)
    assert info["status"] == "completed", info
    ram = info["ram"]
    assert (ram["multifd-bytes"] > RAM_MB * MB * 0.9) == bool(channels), ram
    assert ram["transferred"] >= ram["multifd-bytes"], "multifd bytes are part of transferred"
    rate = achieved_rate(info)
    assert rate is not None, info
    # the bytes over the time the guest ran, against QEMU's megabits/s of its last iteration: within 1 % here at a
    # steady capped rate (counting multifd's bytes twice would be 2x, counting the downtime's bytes 10-20 % more)
    assert rate == pytest.approx(ram["mbps"] * 1e6 / 8, rel=0.05), info
