"""``linalign bench --rpc loopback|HOST:PORT,HOST:PORT``: what the RPC hop
costs. One aligned request (the bench's workload, greedy, from a cold cache)
decoded with the model local, on one worker, and split over two, all in the
same run:

* TTFT and decode tok/s, timed with the client talking to the workers
  directly; ratios against local from the same run;
* bytes per token on the wire, counted by a TCP proxy
  (:mod:`.counting_proxy`) in front of each worker, in a run of its own
  (the proxy's copy would slow the timed runs): per decode step (two streams'
  tokens), per prompt token of the prefill, and to load the model.

``loopback`` starts the workers itself (``linalign rpc-worker`` on
127.0.0.1, :mod:`.rpc_workers`). A worker serves one client at a time, so the
configurations run one after another, each loaded afresh, in ``--rounds``
rounds whose order rotates (slow drift of a shared machine spreads over
all), ``--reps`` timed runs each after a warm-up; medians over all.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

__all__ = ["main", "run_rpc_bench"]


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _configs(endpoints: list[str]) -> dict[str, list[str]]:
    configs = {"local": [], "1 worker": endpoints[:1]}
    if len(endpoints) >= 2:
        configs["2 workers"] = endpoints[:2]
    return configs


def _open(model, endpoints: list[str], args):
    from .. import Aligner
    from .workload import build_workload

    aligner = Aligner(model, n_ctx=args.n_ctx, n_threads=args.threads, rpc_servers=endpoints or None,
                      n_gpu_layers=args.n_gpu_layers if endpoints else None)
    return aligner, build_workload(aligner)


def _timed(model, endpoints: list[str], args, log: Callable[[str], None]) -> list:
    from .methods import AlignerMethod

    aligner, workload = _open(model, endpoints, args)
    try:
        method = AlignerMethod("linalign", aligner, workload)
        method.run(args.max_tokens)  # warm-up
        return [method.run(args.max_tokens) for _ in range(args.reps)]
    finally:
        aligner.close()


def _counted(model, endpoints: list[str], args) -> dict:
    """Bytes through a counting proxy per worker: model load, prefill, decode."""
    from .counting_proxy import CountingProxy
    from .methods import _completion_timing
    from .workload import RATIO, SEED, TOP_P

    proxies = [CountingProxy(e) for e in endpoints]
    total = lambda: sum(p.sent + p.received for p in proxies)  # noqa: E731
    try:
        aligner, workload = _open(model, [p.endpoint for p in proxies], args)
        load_bytes = total()
        try:
            aligner.reset()
            before = total()
            first_seen: list[int] = []
            chunks = aligner.create_completion(workload.prompt_p, workload.prompt_b, ratio=RATIO,
                                               max_tokens=args.max_tokens, temperature=0.0, top_p=TOP_P, seed=SEED,
                                               stream=True)

            def noting_first():
                for chunk in chunks:
                    if not first_seen:
                        first_seen.append(total())
                    yield chunk
            _, _, last, _ = _completion_timing(noting_first(), time.perf_counter())
            end = total()
        finally:
            aligner.close()
    finally:
        for p in proxies:
            p.close()
    n_generated = last["usage"]["completion_tokens"]
    prefill = first_seen[0] - before
    decode = end - first_seen[0]
    return {"load_bytes": load_bytes, "prefill_bytes": prefill, "decode_bytes": decode,
            "prompt_tokens": workload.n_prompt_tokens, "decode_steps": n_generated - 1,
            "bytes_per_prompt_token": prefill / workload.n_prompt_tokens,
            "bytes_per_decode_step": decode / max(1, n_generated - 1)}


def run_rpc_bench(args, endpoints: list[str], log: Callable[[str], None]) -> dict:
    from .. import default_model_path
    from .runner import _cpu_name

    model = args.model or str(default_model_path())
    configs = _configs(endpoints)
    names = list(configs)
    samples: dict[str, list] = {name: [] for name in names}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            log(f"round {r + 1}/{args.rounds}: {name}")
            samples[name] += _timed(model, configs[name], args, log)
    wire = {}
    for name in names[1:]:
        log(f"bytes on the wire: {name}")
        wire[name] = _counted(model, configs[name], args)
    load_after = os.getloadavg()

    results = {}
    for name in names:
        ttft = [s.ttft_s for s in samples[name]]
        tps = [s.decode_tps for s in samples[name]]
        results[name] = {"ttft_s": _summary(ttft), "decode_tps": _summary(tps), "workers": configs[name],
                         "n_generated": samples[name][0].n_generated, "wire": wire.get(name)}
    local = results["local"]
    for name in names:
        results[name]["decode_tps_vs_local"] = results[name]["decode_tps"]["median"] / local["decode_tps"]["median"]
        results[name]["ttft_vs_local"] = results[name]["ttft_s"]["median"] / local["ttft_s"]["median"]
    return {"benchmark": "rpc", "model": os.path.basename(model), "max_tokens": args.max_tokens, "reps": args.reps,
            "rounds": args.rounds, "threads": args.threads, "worker_threads": args.worker_threads,
            "n_gpu_layers": args.n_gpu_layers,
            "endpoints": endpoints, "loopback": args.rpc == "loopback", "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "loadavg_before": load_before, "loadavg_after": load_after, "results": results}


def format_rpc_table(doc: dict) -> str:
    lines = [f"RPC hop: {doc['model']}, {doc['max_tokens']} tokens, aligned (2 streams), greedy; "
             f"{doc['rounds']} rounds x {doc['reps']} runs; client threads {doc['threads']}; "
             f"n_gpu_layers {'all' if doc['n_gpu_layers'] is None else doc['n_gpu_layers']}"
             + (f", worker threads {doc['worker_threads']} (loopback)" if doc["loopback"] else ""),
             f"load average {doc['loadavg_before'][0]:.2f} before, {doc['loadavg_after'][0]:.2f} after "
             f"({doc['cpu_count']} CPUs: {doc['cpu']})",
             "",
             f"{'config':<10} {'TTFT ms (min-max)':>24} {'x local':>8} {'decode tok/s (min-max)':>26} {'x local':>8} "
             f"{'B/step':>9} {'B/prompt tok':>12} {'load MiB':>9}"]
    for name, r in doc["results"].items():
        t, d, w = r["ttft_s"], r["decode_tps"], r["wire"]
        ttft = f"{t['median'] * 1e3:.0f} ({t['min'] * 1e3:.0f}-{t['max'] * 1e3:.0f})"
        tps = f"{d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f})"
        wire = (f"{w['bytes_per_decode_step']:>9.0f} {w['bytes_per_prompt_token']:>12.0f} {w['load_bytes'] / 2**20:>9.1f}"
                if w else f"{'-':>9} {'-':>12} {'-':>9}")
        lines.append(f"{name:<10} {ttft:>24} {r['ttft_vs_local']:>8.2f} {tps:>26} {r['decode_tps_vs_local']:>8.2f} "
                     f"{wire}")
    lines.append("")
    lines.append("B/step: bytes both ways per decode step (one token of each of the 2 streams); "
                 "B/prompt tok: per prompt token of the prefill")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    from .rpc_workers import LoopbackWorker

    p = argparse.ArgumentParser(prog="linalign bench --rpc", description=__doc__.splitlines()[0])
    p.add_argument("--rpc", required=True, metavar="loopback|HOST:PORT[,HOST:PORT]",
                   help="two workers to measure (the first alone, then both), or 'loopback' to start two here")
    p.add_argument("--model", help="GGUF file (default: the default model)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per run (default 64)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per configuration and round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the configurations (default 3)")
    p.add_argument("--n-ctx", type=int, default=2048, help="context window per stream (default 2048)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="client CPU threads (default: all)")
    p.add_argument("--worker-threads", type=int, default=os.cpu_count() or 1,
                   help="threads of each loopback worker (default: all; the workers compute one after another)")
    p.add_argument("--n-gpu-layers", type=int, default=None,
                   help="layers on the workers (default: all). llama.cpp offloads the last layers first, the "
                        "output layer before any other, so the logits of every step come back over the wire")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(list(argv))
    if args.max_tokens < 2 or args.reps < 1 or args.rounds < 1 or args.threads < 1 or args.worker_threads < 1:
        p.error("need --max-tokens >= 2 and --reps, --rounds, --threads, --worker-threads >= 1")
    log = (lambda s: None) if args.quiet else (lambda s: print(f"[bench rpc] {s}", file=sys.stderr, flush=True))

    from ..rpc import RpcError, parse_endpoints, require_rpc

    workers: list[LoopbackWorker] = []
    try:
        require_rpc()
        if args.rpc == "loopback":
            workers = [LoopbackWorker(threads=args.worker_threads).start() for _ in range(2)]
            endpoints = [w.endpoint for w in workers]
            log(f"loopback workers on {', '.join(endpoints)}")
        else:
            endpoints = parse_endpoints(args.rpc)
        doc = run_rpc_bench(args, endpoints, log)
    except (ValueError, RpcError) as e:
        print(f"linalign bench: {e}", file=sys.stderr)
        return 2
    finally:
        for w in workers:
            w.stop()
    print(format_rpc_table(doc))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0
