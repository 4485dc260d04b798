"""``linalign --version [--rpc HOST:PORT,...]``: linalign's and llama.cpp's
versions, whether the RPC backend is built, and the devices a model could
use here (with ``--rpc``, each worker's too, after greeting it)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main", "format_devices"]


def format_devices(devices: list[dict]) -> str:
    lines = []
    for d in devices:
        memory = f", {d['memory_total'] // 2**20} MiB ({d['memory_free'] // 2**20} MiB free)" if d["memory_total"] else ""
        lines.append(f"  {d['name']} [{d['type']}]: {d['description']}{memory}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="linalign --version", description=__doc__.splitlines()[0])
    parser.add_argument("--rpc", default=None, metavar="HOST:PORT[,HOST:PORT...]",
                        help="also list these RPC workers' devices")
    args = parser.parse_args(list(argv))

    import linalign
    from . import _core
    from .llama_version import installed_llama_cpp_version
    from .rpc import RpcError, protocol_version, worker_devices

    rpc = (f"built, protocol {'.'.join(map(str, protocol_version()))}" if _core.rpc_available()
           else "not built (-DGGML_RPC=ON)")
    print(f"linalign {linalign.__version__}\nllama-cpp-python {installed_llama_cpp_version()}\nRPC backend: {rpc}")
    print("devices:\n" + format_devices(_core.local_devices()))
    if args.rpc:
        try:
            print("RPC workers' devices:\n" + format_devices(worker_devices(args.rpc)))
        except (ValueError, RpcError) as e:
            print(f"linalign: {e}", file=sys.stderr)
            return 2
    return 0
