"""A migration link between two QEMUs on this machine that a test can cut, like a cable pulled out and put back.

`Link(target_port)` listens on a port of its own and forwards every connection to 127.0.0.1:target_port. While
it is cut nothing crosses in either direction and no error reaches either end (a close waits too): the bytes
wait, as on a real link where TCP keeps retransmitting them, and cross once it is mended. `reset()` instead
breaks every connection at once, as a host that reboots does. Small socket buffers keep the bytes in flight
few, so that a sender notices a cut link within a second.
"""
from __future__ import annotations

import socket
import struct
import threading

BUFFER = 64 * 1024
LINGER_ZERO = struct.pack("ii", 1, 0)


class Link:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self._mended = threading.Event()
        self._mended.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._mended.clear()

    def mend(self) -> None:
        self._mended.set()

    def reset(self) -> None:
        """Break every connection now (the peers see them reset)."""
        with self._lock:
            for sock in self._sockets:
                _abort(sock)
            self._sockets.clear()

    def close(self) -> None:
        self._closed = True
        self._mended.set()
        self._listener.close()
        self.reset()

    def _accept(self) -> None:
        while not self._closed:
            try:
                near, unused_address = self._listener.accept()
            except OSError:
                return
            self._mended.wait()
            try:
                far = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                near.close()  # nobody listens there (yet): the connection is refused, as it would be
                continue
            far.settimeout(None)
            far.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
            with self._lock:
                self._sockets += [near, far]
                self.connections += 1
            threading.Thread(target=self._pump, args=(near, far), daemon=True).start()
            threading.Thread(target=self._pump, args=(far, near), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Bytes, then the close, from one end to the other; a reset one end saw reaches the other end too."""
        try:
            while data := source.recv(BUFFER):
                self._mended.wait()
                sink.sendall(data)
            self._mended.wait()
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            self._mended.wait()
            _abort(sink)


def _abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0) rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        sock.close()
    except OSError:
        pass
