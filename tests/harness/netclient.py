"""A client of the test guest on the lab's guest network, as a user of the VM sees it: a TCP connection to the
guest's echo service with a small request every 10 ms, a ping every 10 ms, an SSH session running a loop.

Each runs in the client namespace (lmclient) as its own process, and reports what it saw: the longest gap between
two answers (the network outage a client notices) and whether the connection dropped. Times are CLOCK_MONOTONIC
(TCP) or the wall clock (ping, SSH), both readable by the test that started them.

    ip netns exec lmclient python3 netclient.py echo HOST PORT OUT.json   # until SIGTERM
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

CLIENT_NS = "lmclient"
INTERVAL = 0.01
PING_LINE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


def gaps(times: list[float]) -> dict:
    """The longest gap between consecutive answers, and when it ended."""
    if len(times) < 2:
        return {"answers": len(times), "max_gap_s": None, "gap_end": None}
    widest = max(range(1, len(times)), key=lambda i: times[i] - times[i - 1])
    return {"answers": len(times), "max_gap_s": round(times[widest] - times[widest - 1], 4),
            "gap_end": times[widest]}


def echo_client(host: str, port: int, out: str) -> None:
    """Send a numbered line every INTERVAL, read its echo; on SIGTERM write what happened to `out`."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    answers: list[float] = []
    error = None
    try:
        with socket.create_connection((host, port), timeout=10) as conn:
            conn.settimeout(120)  # longer than any move: a drop shows as an error, not as a timeout
            reader = conn.makefile("rb")
            seq = 0
            while not stop.is_set():
                seq += 1
                conn.sendall(b"%d\n" % seq)
                line = reader.readline()
                if line != b"%d\n" % seq:
                    error = f"request {seq}: got {line!r}"
                    break
                answers.append(time.monotonic())
                stop.wait(INTERVAL)
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"dropped": error is not None, "error": error, **gaps(answers)}, handle)


class Background:
    """A client process in the client namespace, stopped with SIGTERM."""

    def __init__(self, argv: list[str]):
        # Never the test's stdin: ssh makes its stdin non-blocking, and ansible-playbook refuses to run on that.
        self.process = subprocess.Popen(["ip", "netns", "exec", CLIENT_NS, *argv], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.communicate(timeout=30)[0]


class Echo(Background):
    def __init__(self, host: str, out: str, port: int = 7):
        self.out = out
        super().__init__([sys.executable, __file__, "echo", host, str(port), out])

    def result(self) -> dict:
        self.stop()
        with open(self.out, encoding="utf-8") as handle:
            return json.load(handle)


class Ping(Background):
    """ping every 10 ms; the longest gap between replies (wall clock)."""

    def __init__(self, host: str):
        self.started = time.time()
        super().__init__(["ping", "-D", "-n", "-i", str(INTERVAL), host])

    def result(self) -> dict:
        """The gaps, and how long after the start the first reply came (`first_answer_s`)."""
        replies = [float(match.group(1)) for line in self.stop().splitlines() if (match := PING_LINE.match(line))]
        return {**gaps(replies), "first_answer_s": round(replies[0] - self.started, 3) if replies else None}


class SSHLoop(Background):
    """An SSH session into the guest running a loop that prints a number ten times a second."""

    def __init__(self, host: str, key: str):
        super().__init__(["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"root@{host}",
                          "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"])
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def alive(self) -> bool:
        return self.process.poll() is None

    def result(self) -> dict:
        running = self.alive()
        self.process.terminate()
        self.process.wait(30)
        self.reader.join(5)
        numbers = [int(line[1]) for line in self.lines if line[1].isdigit()]
        return {"survived": running, "lines": len(numbers), "in_order": numbers == list(range(len(numbers))),
                **gaps([stamp for stamp, text in self.lines if text.isdigit()])}


if __name__ == "__main__":
    if sys.argv[1:2] == ["echo"]:
        echo_client(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(__doc__)
