"""The sampler chain alone at greedy decoding, plain and aligned, on the
logits of `linalign bench overhead`'s synthetic model: the part of a step's
host work that the sampler's passes over the vocabulary set.

    python benchmarks/greedy_sampler.py [--vocab 49152,152064] [--calls 2000] [--reps 5] [--top-p 0.8]
                                        [--threads 1]

For each vocabulary it writes the random 2-layer model (`pip install
".[bench]"` for gguf), takes the last prompt position's logits of an
aligned request's two streams (P with the principle, B without), and times
``_core.SamplerChain.sample`` on them, temperature 0 and no penalties (the
greedy fast path, ``apply_dense_best``), at ratio 0 (plain: P's best token)
and at ratio 2 (aligned: the best combined token of P's nucleus). It
prints µs per call (the min and the median of the repetitions) and the
size of P's nucleus: random logits are flat, so the nucleus holds thousands
of tokens, the sampler's hardest case; a real model's holds a handful.
``--threads 2`` splits greedy's scans over two threads, as the engine does
for a step that samples one request.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import linalign
from linalign import _core
from linalign.benchmarking.overhead import PRINCIPLE, PROMPTS
from linalign.synthetic_model import write_tiny_gguf


def nucleus_size(logits: np.ndarray, top_p: float) -> int:
    p = np.exp(logits.astype(np.float64) - logits.max())
    p = np.sort(p / p.sum())[::-1]
    return int(np.searchsorted(np.cumsum(p), top_p) + 1)


def time_chain(model, logits_p: np.ndarray, logits_b: np.ndarray, ratio: float, top_p: float, calls: int,
               reps: int, threads: int) -> list[float]:
    params = _core.SamplingParams()
    params.temperature = 0.0
    params.top_k = 0
    params.top_p = top_p
    params.ratio = ratio
    chain = _core.SamplerChain(params, model)
    chain.set_threads(threads)
    n = logits_p.size
    for _ in range(calls // 10):  # warm-up
        chain.sample(logits_p, logits_b, n)
    per_call = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            chain.sample(logits_p, logits_b, n)
        per_call.append((time.perf_counter() - start) / calls * 1e6)
    return per_call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", default="49152,152064", help="comma-separated vocabulary sizes")
    ap.add_argument("--calls", type=int, default=2000, help="sampler calls per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--top-p", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=1, help="threads greedy's scans may take")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="linalign-greedy-") as tmp:
        for n_vocab in (int(v) for v in args.vocab.split(",")):
            path = write_tiny_gguf(Path(tmp) / f"v{n_vocab}.gguf", n_vocab=n_vocab, eos_never_chosen=True)
            with linalign.Aligner(model_path=str(path), n_ctx=320, n_threads=2, seed=0, verbose=False) as aligner:
                request = aligner.completion_request(prompt=PROMPTS[0], principle=PRINCIPLE, ratio=2.0)
                rows_p, rows_b = aligner.engine.eval_logits(list(request.prompt), list(request.base_prompt))
                logits_p = np.ascontiguousarray(rows_p[-1], dtype=np.float32)
                logits_b = np.ascontiguousarray(rows_b[-1], dtype=np.float32)
                print(f"vocabulary {n_vocab:,}: P's nucleus at top_p {args.top_p} holds "
                      f"{nucleus_size(logits_p, args.top_p):,} tokens")
                for name, ratio in (("plain (ratio 0)", 0.0), ("aligned (ratio 2)", 2.0)):
                    us = time_chain(aligner._model, logits_p, logits_b, ratio, args.top_p, args.calls, args.reps,
                                    args.threads)
                    print(f"  {name:18s} {min(us):7.1f} us per call (min of {args.reps}), "
                          f"median {statistics.median(us):7.1f}")


if __name__ == "__main__":
    main()
