"""The ``linalign`` command.

    linalign "PROMPT" --principle TEXT [--compare]   one aligned answer, streamed
    linalign chat --principle TEXT                   interactive multi-turn chat
    linalign serve ...                               OpenAI-compatible server
    linalign bench ...                               benchmarks
    linalign eval {persona,pairs,compare} ...        evaluation harness
    linalign rpc-worker [--host H] [--port P] ...    a llama.cpp RPC worker for --rpc
    linalign --version [--rpc HOST:PORT,...]         versions and devices
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

__all__ = ["main"]


def _subcommands() -> dict[str, Callable[[Sequence[str]], int]]:
    # imported lazily: each pulls in its own dependencies
    def serve(argv: Sequence[str]) -> int:
        from .server import main as serve_main
        return serve_main(argv)

    def bench(argv: Sequence[str]) -> int:
        from .bench import main as bench_main
        return bench_main(argv)

    def evaluate(argv: Sequence[str]) -> int:
        from .evaluation.cli import main as eval_main
        return eval_main(argv)

    def chat(argv: Sequence[str]) -> int:
        from .chat_cli import main as chat_main
        return chat_main(argv)

    def rpc_worker(argv: Sequence[str]) -> int:
        from .rpc.worker_cli import main as worker_main
        return worker_main(argv)

    def version(argv: Sequence[str]) -> int:
        from .version_cli import main as version_main
        return version_main(argv)

    return {"serve": serve, "bench": bench, "eval": evaluate, "chat": chat, "rpc-worker": rpc_worker,
            "--version": version}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _subcommands()
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    from .demo_cli import main as demo_main
    return demo_main(argv)
