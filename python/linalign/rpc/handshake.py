"""The RPC protocol's HELLO, done before ggml-rpc connects.

ggml-rpc aborts the process when it cannot connect to a worker or when the
worker's protocol version is not its own (GGML_ABORT in its dispatcher), and
``ggml_backend_rpc_add_server`` connects at once. So each worker is greeted
here first, where failing is an exception: unreachable, busy with another
client, or another protocol version, each naming the worker.

The wire format (ggml/src/ggml-rpc, protocol 7 of llama-cpp-python 0.3.36):
the command byte HELLO (14), the request's size as a little-endian uint64
and the request (24 bytes of transport capabilities; zeros: plain TCP); the
answer is its size (uint64) and major, minor, patch, a pad byte and the
worker's 24 bytes of capabilities. Closing the connection after it is how
the worker expects a client to leave.
"""
from __future__ import annotations

import socket
import struct

from .. import _core
from .endpoints import parse_endpoint
from .errors import RpcVersionMismatchError, RpcWorkerBusyError, RpcWorkerUnreachableError

__all__ = ["greet_worker", "worker_accepts_connections", "protocol_version"]

_CMD_HELLO = 14
_CAPS_SIZE = 24
_HELLO_REQUEST = struct.pack("<BQ", _CMD_HELLO, _CAPS_SIZE) + bytes(_CAPS_SIZE)


def protocol_version() -> tuple[int, int, int]:
    """This libggml's RPC protocol version (that of its ggml-rpc.h)."""
    return tuple(_core.rpc_protocol_version())


def _version(v: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in v)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _connect(endpoint: str, timeout: float) -> socket.socket:
    host, port = parse_endpoint(endpoint)
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise RpcWorkerUnreachableError(endpoint, f"no answer within {timeout:g} s") from None
    except socket.gaierror as e:
        raise RpcWorkerUnreachableError(endpoint, f"cannot resolve {host}: {e.strerror}") from None
    except OSError as e:
        raise RpcWorkerUnreachableError(endpoint, e.strerror or str(e)) from None


def worker_accepts_connections(endpoint: str, timeout: float = 1.0) -> str | None:
    """None when ``endpoint`` accepts a TCP connection, else why not. A
    worker busy with its one client still accepts (the kernel queues the
    connection; the worker drops it when it gets to it), so this tells a
    gone worker from a busy one without disturbing it."""
    try:
        _connect(endpoint, timeout).close()
    except RpcWorkerUnreachableError as e:
        return e.reason
    return None


def greet_worker(endpoint: str, timeout: float = 10.0) -> tuple[int, int, int]:
    """The worker's protocol version, after checking it is one ggml-rpc here
    accepts (same major, minor at most ours). Raises
    RpcWorkerUnreachableError, RpcWorkerBusyError or RpcVersionMismatchError."""
    ours = protocol_version()
    with _connect(endpoint, timeout) as sock:
        try:
            sock.sendall(_HELLO_REQUEST)
            size = struct.unpack("<Q", _recv_exact(sock, 8))[0]
            answer = _recv_exact(sock, min(size, 64))
        except socket.timeout:
            raise RpcWorkerBusyError(endpoint, timeout) from None
        except (EOFError, ConnectionError):
            # a worker of another protocol version drops a HELLO of a size it
            # does not expect
            raise RpcVersionMismatchError(endpoint, "another version (it closed the connection on our HELLO)",
                                          _version(ours)) from None
    if len(answer) < 3:
        raise RpcVersionMismatchError(endpoint, f"unknown (a {size}-byte answer to HELLO)", _version(ours))
    theirs = tuple(answer[:3])
    if theirs[0] != ours[0] or theirs[1] > ours[1]:
        raise RpcVersionMismatchError(endpoint, _version(theirs), _version(ours))
    return theirs
