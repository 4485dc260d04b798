"""``linalign bench``: aligned decoding against the cost floor and the ways
users align today (plain, floor, linalign, naive, two-call). The work is in
:mod:`linalign.benchmarking`; this is its command line.

``linalign bench server [options]`` benchmarks the OpenAI-compatible server
instead (:mod:`linalign.benchmarking.server_bench`), ``linalign bench
principles`` the cost of composing several principles
(:mod:`linalign.benchmarking.principles_bench`), ``linalign bench overhead``
the host work around llama_decode on a synthetic model it writes itself
(:mod:`linalign.benchmarking.overhead`), ``linalign bench --rpc
loopback|HOST:PORT,HOST:PORT`` what llama.cpp's RPC hop costs
(:mod:`linalign.benchmarking.rpc_bench`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .benchmarking.methods import METHOD_NAMES

__all__ = ["main"]


def _methods(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in METHOD_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"methods are a comma-separated subset of {','.join(METHOD_NAMES)}")
    return names


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv and argv[0] == "server":
        from .benchmarking.server_bench import main as server_main
        return server_main(argv[1:])
    if argv and argv[0] == "long-chat":
        from .benchmarking.long_chat import main as long_chat_main
        return long_chat_main(argv[1:])
    if argv and argv[0] == "principles":
        from .benchmarking.principles_bench import main as principles_main
        return principles_main(argv[1:])
    if any(a == "--rpc" or a.startswith("--rpc=") for a in argv):
        from .benchmarking.rpc_bench import main as rpc_main
        return rpc_main(argv)
    if argv and argv[0] == "overhead":
        from .benchmarking.overhead import main as overhead_main
        return overhead_main(argv[1:])
    parser = argparse.ArgumentParser(prog="linalign bench", description=__doc__.splitlines()[0],
                                     epilog="linalign bench server --help: the server benchmark; "
                                            "linalign bench principles --help: composed principles; "
                                            "linalign bench overhead --help: host work per token; "
                                            "linalign bench --rpc loopback: the cost of llama.cpp's RPC hop")
    parser.add_argument("--model", help="GGUF file (default: the default model)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per run (default 64)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions after the warm-up (default 5)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context window per stream (default 2048)")
    parser.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload (-1: all; needs a GPU build)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all)")
    parser.add_argument("--methods", type=_methods, default=list(METHOD_NAMES),
                        help=f"comma-separated subset of {','.join(METHOD_NAMES)}")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-RSS child processes")
    parser.add_argument("--memory-reps", type=int, default=1, help="fresh processes per memory probe (default 1)")
    parser.add_argument("--no-multiturn", dest="multiturn", action="store_false", help="skip the 5-turn chat")
    parser.add_argument("--multiturn-tokens", type=int, default=24, help="reply tokens per chat turn (default 24)")
    parser.add_argument("--combine-iters", type=int, default=300, help="iterations per combine timing (default 300)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--png", metavar="OUT", help="write a chart")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(list(argv))
    if args.max_tokens < 2 or args.reps < 1 or args.threads < 1 or args.n_ctx <= args.max_tokens:
        parser.error("need --max-tokens >= 2, --reps >= 1, --threads >= 1 and --n-ctx > --max-tokens")

    from .benchmarking import BenchConfig, run_benchmark
    from .benchmarking.report import format_table, write_json, write_png

    config = BenchConfig(n_gpu_layers=args.n_gpu_layers, model=args.model, max_tokens=args.max_tokens, reps=args.reps, n_ctx=args.n_ctx,
                         threads=args.threads, methods=args.methods, memory=args.memory, memory_reps=args.memory_reps,
                         multiturn=args.multiturn, multiturn_tokens=args.multiturn_tokens,
                         combine_iters=args.combine_iters)
    log = (lambda s: None) if args.quiet else (lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True))
    doc = run_benchmark(config, log=log)
    print(format_table(doc))
    if args.json:
        write_json(doc, args.json)
    if args.png:
        write_png(doc, args.png)
    return 0
