"""Making RPC workers ready for a model to load on: the backend is built,
and every worker is up, free and speaks this protocol version."""
from __future__ import annotations

from typing import Iterable

from .. import _core
from ..llama_version import installed_llama_cpp_version
from .endpoints import parse_endpoints
from .errors import RpcNotBuiltError
from .handshake import greet_worker

__all__ = ["require_rpc", "check_workers", "worker_devices"]


def require_rpc() -> None:
    """Raises RpcNotBuiltError unless llama-cpp-python has the RPC backend."""
    if not _core.rpc_available():
        raise RpcNotBuiltError(installed_llama_cpp_version() or "0.3.36")


def check_workers(rpc_servers: str | Iterable[str], timeout: float = 10.0) -> list[str]:
    """The workers as normalised endpoints, each greeted (see
    :func:`~linalign.rpc.handshake.greet_worker`); raises on the first that
    cannot serve. A worker a model of this process is loaded on is skipped:
    ggml-rpc shares that connection, and a worker serves one at a time."""
    endpoints = parse_endpoints(rpc_servers)
    require_rpc()
    held = set(_core.rpc_held())
    for endpoint in endpoints:
        if endpoint not in held:
            greet_worker(endpoint, timeout)
    return endpoints


def worker_devices(rpc_servers: str | Iterable[str]) -> list[dict]:
    """Each worker's devices (name, description: its endpoint, memory)."""
    return _core.rpc_worker_devices(check_workers(rpc_servers))
