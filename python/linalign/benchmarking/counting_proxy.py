"""A TCP proxy that counts the bytes crossing it, for what an RPC hop costs
on the wire (llama.cpp counts none).

Each accepted connection gets a connection to the target and two threads
that copy bytes one way each, with TCP_NODELAY on both sides as ggml-rpc
sets it on its own sockets. The copy adds a hop of its own, so the RPC
benchmark counts bytes through it in a run of its own and times runs that go
to the workers directly.
"""
from __future__ import annotations

import socket
import threading

__all__ = ["CountingProxy"]

_CHUNK = 1 << 16


class CountingProxy:
    """Listens on 127.0.0.1 (``endpoint``) and forwards to ``target``
    ("host:port"); ``sent`` counts client-to-target bytes, ``received`` the
    other way. A context manager; ``close()`` ends every connection."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.sent = 0
        self.received = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, name="counting-proxy", daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.sent = self.received = 0

    def _count(self, upstream: bool, n: int) -> None:
        with self._lock:
            if upstream:
                self.sent += n
            else:
                self.received += n

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(_CHUNK):
                self._count(upstream, len(data))  # before it is passed on: the peer may read the count then
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # one side closed: close both, so the other pump and both peers see it
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> "CountingProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
