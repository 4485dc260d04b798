"""``linalign rpc-worker``: serves this machine's devices to one linalign
(or llama.cpp) process at a time over llama.cpp's RPC protocol.

    linalign rpc-worker [--host 127.0.0.1] [--port 50052] [--threads N] [--cache DIR] [--device NAME[,NAME...]]

The server is ggml-rpc's own (``ggml_backend_rpc_start_server``), from the
libggml linalign runs on, so client and worker speak one protocol version.
The protocol has no authentication or encryption: whoever reaches the port
can allocate memory and run graphs on this machine. Keep the default
127.0.0.1 and reach a worker on another machine through an SSH tunnel
(docs/scaling.md).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from typing import Sequence

__all__ = ["main"]

_UNSAFE = ("linalign rpc-worker: WARNING: {host} is not a loopback address. The RPC protocol has no "
           "authentication: anyone who can reach {host}:{port} can use this machine's devices and memory. "
           "Prefer --host 127.0.0.1 and an SSH tunnel from the client: "
           "ssh -N -L {port}:127.0.0.1:{port} USER@THIS-MACHINE")


def _parser() -> argparse.ArgumentParser:
    from ..threads import physical_cores

    p = argparse.ArgumentParser(prog="linalign rpc-worker", description=__doc__.splitlines()[0],
                                epilog="the client: linalign --rpc HOST:PORT, Aligner(rpc_servers=['HOST:PORT'])")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=50052, help="port (default 50052, as llama.cpp's rpc-server)")
    p.add_argument("--threads", type=int, default=physical_cores(),
                   help=f"CPU threads for the CPU device (default: the physical cores, {physical_cores()} here)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="cache tensors over 10 MiB here by hash, so that a client reloading the model sends "
                        "their hashes instead of their bytes (made if missing)")
    p.add_argument("--device", action="append", default=None, metavar="NAME[,NAME...]",
                   help="devices to serve (linalign --version lists them; default: the GPUs, or the CPU "
                        "when there are none)")
    return p


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_bind(host: str, port: int) -> None:
    """Binds and lets go, for a clear error before ggml-rpc's terse one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ggml-rpc binds
        s.bind((host, port))


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv))
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be in [1, 65535], got {args.port}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    devices = [name.strip() for item in (args.device or []) for name in item.split(",") if name.strip()]

    from .. import _core
    from .errors import RpcNotBuiltError
    from .workers import require_rpc

    try:
        require_rpc()
    except RpcNotBuiltError as e:
        print(f"linalign rpc-worker: {e}", file=sys.stderr)
        return 2
    try:
        _check_bind(args.host, args.port)
    except OSError as e:
        print(f"linalign rpc-worker: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    cache = ""
    if args.cache is not None:
        cache = os.path.abspath(os.path.expanduser(args.cache))
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError as e:
            parser.error(f"--cache {args.cache}: {e.strerror or e}")
    if not _is_loopback(args.host):
        print(_UNSAFE.format(host=args.host, port=args.port), file=sys.stderr, flush=True)
    print(f"linalign rpc-worker: serving on {args.host}:{args.port}, one client at a time (Ctrl-C stops it)",
          flush=True)
    # ggml-rpc's accept loop never returns to Python, where a KeyboardInterrupt
    # would be raised: let SIGINT end the process as SIGTERM does
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        _core.rpc_serve(f"{args.host}:{args.port}", cache, args.threads, devices)
    except (ValueError, RuntimeError) as e:
        print(f"linalign rpc-worker: {e}", file=sys.stderr)
        return 1
    return 1
