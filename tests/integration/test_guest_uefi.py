"""The Debian guest booted with UEFI keeps a UEFI variable written in the guest through a live, a stateful and a
cold move; its disks are checked, and each host has exactly the taps of the VMs it runs."""
from __future__ import annotations

import time

from conftest import guestcheck, lab_path

from ansible_collections.livemig.qemu.plugins.module_utils._paths import tap_name
from debianguest import BOOTED, RING_BLOCKS, boot, guest_ssh  # noqa: E402  pylint: disable=wrong-import-order
from lab import build_debian_guest  # noqa: E402  pylint: disable=wrong-import-order

# A variable of our own (non-volatile, boot and runtime access): attributes 0x7, then the value.
VARIABLE = "/sys/firmware/efi/efivars/LivemigTest-5a1c3b2e-7d4f-4e8a-9b6c-0d1e2f3a4b5c"


def moved(lab, guest: dict, target: str, method: str) -> dict:
    """Move the guest by `method` (live-mirror, stateful or cold) and check that the source keeps nothing."""
    result = lab.migrate(guest["name"], guest["host"], target, livemig_method=method.split("-")[0],
                         livemig_allow_cold=True, livemig_keep_source_disks=False)
    assert not result.failed, result.output
    report = lab.report(guest["name"])
    assert report["method"] == method, report["plan"]
    source, guest["host"] = guest["host"], target
    assert lab.taps(source) == set() and lab.taps(target) == {tap_name(guest["name"], "lan")}
    assert [path for path in lab.files(guest["name"]) if f"/{source}/" in path] == [], "the source keeps nothing"
    return report


def test_a_uefi_variable_survives_live_stateful_and_cold_moves(lab):
    name = "debian-uefi"
    guest = boot(lab, name, build_debian_guest(), firmware="uefi")
    tap = guest["tap"]
    try:
        assert guest_ssh(guest, "test -d /sys/firmware/efi && echo uefi").strip() == "uefi"
        guest_ssh(guest, f"printf '\\007\\000\\000\\000livemig-%s' {name} > {VARIABLE}")
        guest_ssh(guest, "systemctl start lm-workload@light")
        since = time.monotonic()
        tap.wait_for(r"^PC \d+ OK", label="hv1", timeout=120, since=since)

        live = moved(lab, guest, "hv2", "live-mirror")
        assert "firmware: UEFI" in "\n".join(live["plan"]) and "disk nvram: mirror" in "\n".join(live["plan"])
        assert guest_ssh(guest, f"cat {VARIABLE} | tail -c +5") == f"livemig-{name}"
        stateful = moved(lab, guest, "hv1", "stateful")
        assert stateful["guest_agent"]["answered"] is True
        assert guest_ssh(guest, f"cat {VARIABLE} | tail -c +5") == f"livemig-{name}"
        guest_ssh(guest, "systemctl stop lm-workload@light")
        summary = guestcheck.analyze([line for line in tap.snapshot() if line[0] >= since])
        assert summary["pagecheck_failures"] == [] and summary["hb_seq_errors"] == 0
        ring = guestcheck.check_ring(lab_path("hv1", "images", f"{name}-ring.raw"), RING_BLOCKS,
                                     min_seq=summary["last_ring_seq"], fmt="raw", force_share=True)
        assert ring["ok"], ring["problems"]

        rebooted = time.monotonic()
        moved(lab, guest, "hv2", "cold")
        line = tap.wait_for(BOOTED, label="hv2", timeout=600, since=rebooted)
        guest["ip"] = line[2].split()[1]
        assert guest_ssh(guest, f"cat {VARIABLE} | tail -c +5") == f"livemig-{name}", \
            "the variable store the cold move copied holds what the guest wrote"
        assert guest_ssh(guest, "findmnt -no SOURCE /").strip().startswith("/dev/vda"), "it booted its own disk"
    finally:
        tap.stop()
        lab.remove(name)
