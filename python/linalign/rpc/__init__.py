"""llama.cpp's RPC backend in linalign: a model's layers on other machines.

``linalign rpc-worker`` (:mod:`.worker_cli`) serves a machine's devices;
``--rpc HOST:PORT[,...]`` and ``Aligner(rpc_servers=[...])`` put layers on
them (:mod:`linalign.devices`); ``linalign serve --rpc`` supervises its
engine in a child process behind an HTTP front (:mod:`.front`), since
ggml-rpc aborts the process that holds the model when a worker goes away.
See docs/scaling.md.
"""
from .endpoints import parse_endpoint, parse_endpoints
from .errors import (RpcError, RpcNotBuiltError, RpcVersionMismatchError, RpcWorkerBusyError,
                     RpcWorkerUnreachableError)
from .handshake import greet_worker, protocol_version, worker_accepts_connections
from .workers import check_workers, require_rpc, worker_devices

__all__ = ["RpcError", "RpcNotBuiltError", "RpcVersionMismatchError", "RpcWorkerBusyError",
           "RpcWorkerUnreachableError", "check_workers", "greet_worker", "parse_endpoint", "parse_endpoints",
           "protocol_version", "require_rpc", "worker_accepts_connections", "worker_devices"]
