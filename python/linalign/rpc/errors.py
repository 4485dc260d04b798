"""What goes wrong with RPC workers, as exceptions a caller can act on.

All are RuntimeErrors, so that the commands' and the server's existing
handling of a model that cannot load reports them as it reports the rest.
"""
from __future__ import annotations

__all__ = ["RpcError", "RpcNotBuiltError", "RpcWorkerUnreachableError", "RpcWorkerBusyError",
           "RpcVersionMismatchError", "REBUILD_COMMAND"]

# --no-cache-dir: pip's wheel cache hands back a llama-cpp-python built
# earlier without the backend, whatever CMAKE_ARGS say. linalign itself
# needs no rebuild: it reaches the backend through ggml's registry.
REBUILD_COMMAND = ('CMAKE_ARGS="-DGGML_RPC=ON" pip install --no-cache-dir --force-reinstall --no-deps '
                   'llama-cpp-python=={version}')


class RpcError(RuntimeError):
    """An RPC worker cannot be used."""


class RpcNotBuiltError(RpcError):
    """llama-cpp-python was built without llama.cpp's RPC backend."""

    def __init__(self, version: str) -> None:
        super().__init__(
            "llama.cpp's RPC backend is not in this llama-cpp-python: it is built only with -DGGML_RPC=ON. "
            f"Rebuild it with: {REBUILD_COMMAND.format(version=version)}")


class RpcWorkerUnreachableError(RpcError):
    """A worker does not accept connections (down, wrong address, firewall)."""

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint, self.reason = endpoint, reason
        super().__init__(f"RPC worker {endpoint} is unreachable ({reason}): is `linalign rpc-worker` running there "
                         "on that port?")


class RpcWorkerBusyError(RpcError):
    """A worker accepted the connection but serves another client."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        super().__init__(f"RPC worker {endpoint} accepted the connection but did not answer within {timeout:g} s: "
                         "a worker serves one client at a time; is another process using it?")


class RpcVersionMismatchError(RpcError):
    """A worker speaks another version of the RPC protocol."""

    def __init__(self, endpoint: str, theirs: str, ours: str) -> None:
        self.endpoint, self.theirs, self.ours = endpoint, theirs, ours
        super().__init__(f"RPC worker {endpoint} speaks RPC protocol {theirs}, this llama-cpp-python {ours}: run "
                         "the worker from the same llama-cpp-python version (linalign rpc-worker)")
