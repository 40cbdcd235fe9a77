"""The Debian guest on the lab's guest network, seen from a client in the client namespace: a TCP connection with a
request every 10 ms and an SSH session survive live moves under the light and heavy workloads, and the target's
announcement makes the network find the guest at once (compared with the same move without it)."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from debianguest import boot, move, move_with_clients  # noqa: E402  pylint: disable=wrong-import-order
from lab import build_debian_guest  # noqa: E402  pylint: disable=wrong-import-order
from netclient import CLIENT_NS, Ping  # noqa: E402  pylint: disable=wrong-import-order

FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module")
def guest(lab):
    """One BIOS Debian guest for this module's moves, booted once on hv1."""
    guest = boot(lab, "debian-net", build_debian_guest())
    FIGURES["boot_s"] = guest["boot_s"]
    try:
        yield guest
    finally:
        guest["tap"].stop()
        lab.remove(guest["name"])
        with open(os.path.join(lab.workdir, "guest-network-figures.json"), "w", encoding="utf-8") as handle:
            json.dump(FIGURES, handle, indent=2)
        print("guest network figures:", json.dumps(FIGURES))


@pytest.mark.parametrize("workload", ["light", "heavy"])
def test_a_clients_connection_and_ssh_session_survive_a_live_move(lab, guest, workload):
    figures = move_with_clients(lab, guest, workload)
    FIGURES[workload] = figures
    assert figures["checks"] == {"connection_kept": True, "ssh_kept": True, "ssh_went_on": True, "memory": True,
                                 "ring": True}, figures
    assert figures["announce"]["enabled"] and figures["announce"]["announce_self"], figures["announce"]
    assert figures["agent_answered"] is True, "the hand-over saw the guest agent answer on the target"


def first_answer_after_a_quiet_move(lab, guest: dict, **extra) -> tuple[dict, float]:
    """Ping the guest for a while (the switches learn its port), stop, move it, ping again: seconds to the first
    answer. Nothing talks to the guest during the move, so it has nothing to answer, and only an announcement tells
    the switches where it went."""
    before = Ping(guest["ip"])
    time.sleep(3)
    assert before.result()["answers"] > 0
    report = move(lab, guest, **extra)
    ping = Ping(guest["ip"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if subprocess.run(["ip", "netns", "exec", CLIENT_NS, "ping", "-c", "1", "-W", "1", guest["ip"]],
                          stdin=subprocess.DEVNULL, capture_output=True, check=False).returncode == 0:
            break
    first = ping.result()["first_answer_s"]
    assert first is not None, "the guest was never found again"
    return report, first


def test_the_announcement_makes_the_network_find_the_moved_guest_at_once(lab, guest):
    """A quiet guest moved without any announcement is found only when a switch forgets its old port (30 s after
    the guest's last frame, in the lab); with the announcement at once."""
    silent, without = first_answer_after_a_quiet_move(lab, guest, livemig_announce=False)
    announced, with_announce = first_answer_after_a_quiet_move(lab, guest)
    FIGURES["announce"] = {"first_answer_without_s": without, "first_answer_with_s": with_announce,
                           "move_without_s": round(silent["finished"] - silent["started"], 1),
                           "move_with_s": round(announced["finished"] - announced["started"], 1)}
    assert silent["announce"]["enabled"] is False and silent["announce"]["rounds_on_resume"] == 0
    assert silent["announce"]["announce_self"] is False
    assert announced["announce"]["enabled"] is True and announced["announce"]["announce_self"] is True
    assert with_announce < 1.5, FIGURES["announce"]
    assert without > with_announce + 3, FIGURES["announce"]
