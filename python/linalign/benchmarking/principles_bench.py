"""``linalign bench principles``: what composing K principles costs.

For K = 1, 2, 4 (``--ks``) principles the same chat request is decoded three
ways, in one run, order rotated each repetition:

    plain       no principle: one stream
    batched     linalign's engine: the K principled streams and the base
                stream in ONE llama_decode per step
    separate    the same streams with one llama_decode each per step
                (benchmarking.baselines.separate_calls_generate), sampled by
                the same native chain

Reported per method: decode tok/s (median over repetitions, after the first
token), time to first token, and for the batched engine the step-cost ratio
against K = 1, whose target is (K + 1) / 2 at most: the streams really are
one batch, so K principles cost less than K separate forwards would.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..aligner import Aligner
from ..default_model import default_model_path
from ..engine import run_on_engine_thread
from ..llama_loader import load_llama
from ..options import SamplingOptions
from ..principles import MAX_PRINCIPLES, Principle
from ..threads import physical_cores
from .baselines import BaselineContext, separate_calls_generate
from .report import or_dash

__all__ = ["PRINCIPLES", "main", "run_principles_bench", "format_principles_table"]

QUESTION = "Tell me about the history of the bicycle, in detail."
PRINCIPLES = (
    "The user is a five-year-old child.",
    "Answer in a cheerful, friendly tone.",
    "Use short sentences.",
    "Mention one surprising fact.",
    "Avoid technical words.",
    "End with a question to the user.",
    "Use British spelling.",
    "Be encouraging.",
)


def _decode_rate(n_tokens: int, t_first: float, t_end: float) -> float | None:
    return (n_tokens - 1) / (t_end - t_first) if n_tokens > 1 and t_end > t_first else None


def run_principles_bench(*, model: str | None = None, ks: Sequence[int] = (1, 2, 4), max_tokens: int = 64,
                         reps: int = 3, n_ctx: int = 1024, threads: int | None = None,
                         log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    threads = threads or physical_cores()
    path = str(model or default_model_path())
    options = SamplingOptions(ratio=2.0, temperature=0.0, max_tokens=max_tokens, top_p=0.8, seed=1)
    messages = [{"role": "user", "content": QUESTION}]
    llama = load_llama(path, n_ctx=n_ctx, n_threads=threads, verbose=False)
    samples: dict[str, dict[str, list[float]]] = {}
    n_tokens: dict[str, list[int]] = {}
    try:
        aligner = Aligner(llama=llama, n_ctx=n_ctx, max_principles=max(ks), n_threads=threads,
                          cache_prompt=False)
        baseline = BaselineContext(llama, n_ctx=n_ctx, n_threads=threads, kv_unified=False, n_seq=1 + max(ks))
        try:
            def batched(k: int | None) -> tuple[int, float, float]:
                principles = None if k is None else [Principle(t, 2.0) for t in PRINCIPLES[:k]]
                request = aligner.chat_request(messages, principles=principles, options=options)
                t0 = time.perf_counter()
                gen = aligner.submit(request)
                t_first = None
                for _ in aligner.deltas(gen):
                    if t_first is None:
                        t_first = time.perf_counter()
                t_end = time.perf_counter()
                return gen.completion_tokens, (t_first or t_end) - t0, _decode_rate(gen.completion_tokens,
                                                                                     t_first or t_end, t_end)

            def separate(k: int) -> tuple[int, float, float]:
                request = aligner.chat_request(messages, principles=[Principle(t, 2.0) for t in PRINCIPLES[:k]],
                                               options=options)
                t0 = time.perf_counter()
                run = run_on_engine_thread(  # where linalign decodes: one OpenMP team (engine/loop.py)
                    lambda: separate_calls_generate(baseline, request.prompts, request.options, request.extra_ratios))
                return len(run.tokens), run.t_first - t0, _decode_rate(len(run.tokens), run.t_first, run.t_end)

            methods: list[tuple[str, Callable[[], tuple[int, float, float]]]] = [("plain", lambda: batched(None))]
            for k in ks:
                methods.append((f"K={k} batched", lambda k=k: batched(k)))
                methods.append((f"K={k} separate", lambda k=k: separate(k)))
            for name, fn in methods:  # warm-up, not counted
                fn()
            for rep in range(reps):
                shift = rep % len(methods)
                for name, fn in methods[shift:] + methods[:shift]:
                    count, ttft, rate = fn()
                    entry = samples.setdefault(name, {"tok_s": [], "ttft_ms": []})
                    if rate is not None:
                        entry["tok_s"].append(rate)
                    entry["ttft_ms"].append(ttft * 1000.0)
                    n_tokens.setdefault(name, []).append(count)
                    log(f"rep {rep + 1}/{reps} {name}: {count} tokens, "
                        f"{rate or float('nan'):.1f} tok/s, TTFT {ttft * 1000:.0f} ms")
        finally:
            baseline.close()
            aligner.close()
    finally:
        llama.close()

    def median(name: str, key: str) -> float | None:
        values = samples.get(name, {}).get(key, [])
        return statistics.median(values) if values else None

    rows = []
    one = median("K=1 batched", "tok_s")
    for name in samples:
        rate = median(name, "tok_s")
        row = {"method": name, "tok_s": rate, "ttft_ms": median(name, "ttft_ms"),
               "tokens": statistics.median(n_tokens[name])}
        if name.endswith("batched") and rate and one:
            k = int(name.split()[0][2:])
            row["step_vs_k1"] = one / rate
            row["target"] = (k + 1) / 2
        if name.endswith("separate"):
            k = name.split()[0]
            batched_rate = median(f"{k} batched", "tok_s")
            row["batched_speedup"] = batched_rate / rate if batched_rate and rate else None
        rows.append(row)
    return {"benchmark": "principles", "model": os.path.basename(path), "threads": threads, "n_ctx": n_ctx,
            "max_tokens": max_tokens, "reps": reps, "ks": list(ks), "question": QUESTION,
            "principles": list(PRINCIPLES[:max(ks)]), "rows": rows, "samples": samples}


def format_principles_table(doc: dict[str, Any]) -> str:
    lines = [f"{doc['model']}, {doc['threads']} threads, {doc['max_tokens']} tokens greedy, "
             f"median of {doc['reps']} reps",
             f"{'method':<16} {'decode tok/s':>12} {'TTFT ms':>8} {'step / K=1':>10} {'target':>7} "
             f"{'batched / separate':>18}"]
    for r in doc["rows"]:
        lines.append(f"{r['method']:<16} {or_dash(r['tok_s'], '.1f'):>12} {or_dash(r['ttft_ms'], '.0f'):>8} "
                     f"{or_dash(r.get('step_vs_k1'), '.2f'):>10} {or_dash(r.get('target'), '.2f'):>7} "
                     f"{or_dash(r.get('batched_speedup'), '.2f'):>18}")
    return "\n".join(lines)


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("--ks takes comma-separated integers") from None
    if not ks or ks[0] < 1 or ks[-1] > MAX_PRINCIPLES:
        raise argparse.ArgumentTypeError(f"--ks: each K in [1, {MAX_PRINCIPLES}]")
    return ks


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="linalign bench principles", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF file (default: the default model)")
    parser.add_argument("--ks", type=_ks, default=[1, 2, 4], help="principle counts (default 1,2,4)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per generation (default 64)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions after a warm-up (default 3)")
    parser.add_argument("--n-ctx", type=int, default=1024, help="context per stream (default 1024)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the physical cores)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--txt", metavar="OUT", help="write the table, with the command, as text")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(list(argv))
    if args.max_tokens < 2 or args.reps < 1 or args.n_ctx <= args.max_tokens:
        parser.error("need --max-tokens >= 2, --reps >= 1 and --n-ctx > --max-tokens")
    log = (lambda s: None) if args.quiet else (lambda s: print(f"[bench principles] {s}", file=sys.stderr, flush=True))
    doc = run_principles_bench(model=args.model, ks=args.ks, max_tokens=args.max_tokens, reps=args.reps,
                               n_ctx=args.n_ctx, threads=args.threads, log=log)
    table = format_principles_table(doc)
    print(table)
    command = "linalign bench principles " + " ".join(argv)
    if args.txt:
        Path(args.txt).write_text(f"$ {command.strip()}\n{table}\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command.strip(), **doc}, indent=2) + "\n", encoding="utf-8")
    return 0
