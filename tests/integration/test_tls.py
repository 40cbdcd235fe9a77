"""TLS on the lab's streams: hostile clients on the migration network get nothing from a move's listeners (the
target's NBD server and incoming migration, the stateful path's receivers), and the move completes anyway."""
from __future__ import annotations

import os
import threading
import time

import intruders
from conftest import LAB_DIR, SMALL_DISK_MB, guestcheck, link, watched

ATTACKER = "hv1"  # the intruders run in hv1's namespace: a host on the migration network that is not the target
TARGET_ADDRESS = "198.18.0.102"


class Hammer:
    """Every kind of intruder against whichever of the target's listeners is open, until stopped: in turn against
    the NBD servers, all at once against the incoming migration (it listens only until the source connects)."""

    def __init__(self, lab, name: str, workdir: str):
        self.lab, self.name, self.workdir = lab, name, workdir
        self.credentials = intruders.credentials(workdir, os.path.join(LAB_DIR, "tls-ca"), "hv1", "198.18.0.101")
        self.attempts: list[dict] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._nbd, daemon=True),
                         threading.Thread(target=self._migration, daemon=True)]

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _nbd_servers(self) -> list[tuple[str, int, set[str]]]:
        """(which, port, export names) of the target's NBD servers now: QEMU's and the copies' qemu-nbd."""
        record = self.lab.record("hv2", self.name) or {}
        found = []
        for key, server in (record.get("volatile") or {}).items():
            if key == "nbd" or key.startswith("copy:"):
                exports = set((server.get("exports") or {}).values()) | ({server["export"]} if server.get("export")
                                                                         else set())
                found.append((key, int(server["port"]), exports))
        return found

    def _nbd(self) -> None:
        while not self._stop.is_set():
            for which, port, exports in self._nbd_servers():
                for kind, tls_dir in self.credentials.items():
                    listed = intruders.list_exports(ATTACKER, tls_dir, TARGET_ADDRESS, port)
                    said = listed.stdout + listed.stderr
                    self.attempts.append({"listener": which, "kind": kind, "detail": said.strip()[-300:],
                                          "in": listed.returncode == 0 or any(e in said for e in exports),
                                          "refused_by_tls": "Connection refused" not in said})
            time.sleep(0.05)

    def _incoming_port(self) -> int | None:
        try:
            addresses = self.lab.qmp("hv2", self.name, "query-migrate").get("socket-address") or []
        except Exception:  # noqa: BLE001 - the target QEMU comes and goes during a move
            return None
        return int(addresses[0]["port"]) if addresses else None

    def _migration(self) -> None:
        while not self._stop.is_set():
            port = self._incoming_port() if self.lab.pid("hv2", self.name) else None
            if port is None:
                time.sleep(0.05)
                continue
            attacks = [threading.Thread(target=self._migrate_into, args=(kind, tls_dir, port), daemon=True)
                       for kind, tls_dir in self.credentials.items()]
            for attack in attacks:
                attack.start()
            for attack in attacks:
                attack.join(60)

    def _migrate_into(self, kind: str, tls_dir: str | None, port: int) -> None:
        status, error = intruders.migrate_into(ATTACKER, tls_dir, TARGET_ADDRESS, port, self.workdir)
        self.attempts.append({"listener": "migration", "kind": kind, "in": status == "completed",
                              "detail": f"{status}: {error}", "refused_by_tls": "Connection refused" not in error})


def assert_kept_out(hammer: Hammer, listeners: tuple[str, ...]) -> None:
    broke_in = [attempt for attempt in hammer.attempts if attempt["in"]]
    assert broke_in == [], broke_in
    for listener in listeners:
        for kind in intruders.KINDS:
            reached = [attempt for attempt in hammer.attempts if attempt["listener"].startswith(listener)
                       and attempt["kind"] == kind and attempt["refused_by_tls"]]
            assert reached, f"no intruder with {kind} reached the open {listener} listener: {hammer.attempts}"
            print(f"{listener}, {kind}: {len(reached)} refused, as in {reached[0]['detail']!r}")
    print(f"{len(hammer.attempts)} intrusions, all refused")


def test_hostile_clients_get_nothing_from_a_live_move_which_completes(lab, vm, tmp_path):
    name = vm("light", disk_mb=SMALL_DISK_MB)
    lab.start(name, "hv1", prefill=False)
    with watched(lab, name, "hv1") as tap:
        with Hammer(lab, name, str(tmp_path)) as hammer:  # 24 MiB/s: the listeners stay open for seconds
            result = lab.migrate(name, "hv1", "hv2", livemig_max_bandwidth=24 << 20)
        assert not result.failed, result.output
        assert "transport: tls (source DN CN=hv1, target DN CN=hv2" in result.output, result.output
        assert_kept_out(hammer, ("nbd", "migration"))
        assert lab.qmp("hv2", name, "query-status")["status"] == "running" and lab.pid("hv1", name) is None
        tap.wait_for(r"^PC \d+ OK", label="hv2", timeout=60, since=time.monotonic())
        summary = guestcheck.analyze(tap.snapshot())
        assert summary["pagecheck_failures"] == [] and summary["hb_seq_errors"] == 0


def test_hostile_clients_get_nothing_from_a_stateful_move_which_completes(lab, vm, tmp_path):
    name = vm("light")
    lab.start(name, "hv1")
    link("hv1", "limit", "200mbit")  # the copies take a few seconds: the receivers listen all that time
    try:
        with watched(lab, name, "hv1") as tap:
            with Hammer(lab, name, str(tmp_path)) as hammer:
                result = lab.migrate(name, "hv1", "hv2", livemig_method="stateful")
            assert not result.failed, result.output
            assert_kept_out(hammer, ("copy:",))
            assert lab.qmp("hv2", name, "query-status")["status"] == "running"
            tap.wait_for(r"^PC \d+ OK", label="hv2", timeout=60, since=time.monotonic())
            assert guestcheck.analyze(tap.snapshot())["pagecheck_failures"] == []
    finally:
        link("hv1", "unlimit")
