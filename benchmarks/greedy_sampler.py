"""The sampler chain alone at greedy decoding, plain and aligned, on the
logits of `linalign bench overhead`'s synthetic model: the part of a step's
host work that the sampler's passes over the vocabulary set.

    python benchmarks/greedy_sampler.py [--vocab 49152,152064] [--calls 2000] [--reps 5] [--top-p 0.8]
                                        [--threads 1] [--default-model]

For each vocabulary it writes the random 2-layer model (`pip install
".[bench]"` for gguf), takes the last prompt position's logits of an
aligned request's two streams (P with the principle, B without), and times
``_core.SamplerChain.sample`` on them, temperature 0 and no penalties (the
greedy fast path, ``apply_dense_best``), at ratio 0 (plain: P's best token)
and at ratio 2 (aligned: the best combined token of P's nucleus). It
prints µs per call (the min and the median of the repetitions) and the
size of P's nucleus: random logits are flat, so the nucleus holds thousands
of tokens, the sampler's hardest case; a real model's holds a handful.
``--threads 2`` lets greedy's scans split over two threads, as the engine
does for a step that samples one request (those that pay for it: every scan
from a 64k vocabulary, the weights from 16k). ``--default-model`` times it
instead on the default model's rows over an answer of its own (a chat
request with a principle, the answer decoded aligned, then each of its
positions' logits by teacher forcing), each call on the next row: a real
model's rows, peaked, with nuclei of a few to a hundred tokens.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import linalign
from linalign import _core
from linalign.benchmarking.overhead import PRINCIPLE, PROMPTS
from linalign.default_model import default_model_path
from linalign.synthetic_model import write_tiny_gguf


MESSAGES = [{"role": "user", "content": "Tell me about the history of Rome in a few sentences."}]
CHAT_PRINCIPLE = "Answer like a pirate."


def nucleus_size(logits: np.ndarray, top_p: float) -> int:
    p = np.exp(logits.astype(np.float64) - logits.max())
    p = np.sort(p / p.sum())[::-1]
    return int(np.searchsorted(np.cumsum(p), top_p) + 1)


def time_chain(model, rows: list[tuple[np.ndarray, np.ndarray]], ratio: float, top_p: float, calls: int,
               reps: int, threads: int) -> list[float]:
    """µs per call of a greedy chain over ``rows`` of (P, B) logits in turn."""
    params = _core.SamplingParams()
    params.temperature = 0.0
    params.top_k = 0
    params.top_p = top_p
    params.ratio = ratio
    chain = _core.SamplerChain(params, model)
    chain.set_threads(threads)
    n = rows[0][0].size
    order = [rows[i % len(rows)] for i in range(calls)]
    for logits_p, logits_b in order[: calls // 10]:  # warm-up
        chain.sample(logits_p, logits_b, n)
    per_call = []
    for _ in range(reps):
        start = time.perf_counter()
        for logits_p, logits_b in order:
            chain.sample(logits_p, logits_b, n)
        per_call.append((time.perf_counter() - start) / calls * 1e6)
    return per_call


def print_times(model, rows, args) -> None:
    for name, ratio in (("plain (ratio 0)", 0.0), ("aligned (ratio 2)", 2.0)):
        us = time_chain(model, rows, ratio, args.top_p, args.calls, args.reps, args.threads)
        print(f"  {name:18s} {min(us):7.1f} us per call (min of {args.reps}), median {statistics.median(us):7.1f}")


def default_model_rows(n_tokens: int = 48) -> tuple[Any, list[tuple[np.ndarray, np.ndarray]]]:
    """The default model's (P, B) logits at each position of an aligned answer."""
    aligner = linalign.Aligner(model_path=str(default_model_path()), n_ctx=512, n_threads=2, seed=0, verbose=False)
    request = aligner.chat_request(messages=MESSAGES, principle=CHAT_PRINCIPLE, ratio=2.0)
    answer = aligner.create_chat_completion(MESSAGES, principle=CHAT_PRINCIPLE, ratio=2.0, max_tokens=n_tokens,
                                            temperature=0.0)["choices"][0]["message"]["content"]
    tokens = aligner.tokenize(answer.encode(), add_bos=False, special=False)[:n_tokens]
    rows_p, rows_b = aligner.engine.eval_logits(list(request.prompt) + tokens, list(request.base_prompt) + tokens,
                                                len(tokens) + 1, len(tokens) + 1)
    rows = [(np.ascontiguousarray(p, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
            for p, b in zip(rows_p, rows_b)]
    return aligner, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", default="49152,152064", help="comma-separated vocabulary sizes")
    ap.add_argument("--calls", type=int, default=2000, help="sampler calls per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--top-p", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=1, help="threads greedy's scans may take")
    ap.add_argument("--default-model", action="store_true", help="the default model's rows over an answer")
    args = ap.parse_args()
    if args.default_model:
        aligner, rows = default_model_rows()
        with aligner:
            sizes = sorted(nucleus_size(p, args.top_p) for p, _ in rows)
            print(f"default model, {len(rows)} rows of an aligned answer: P's nucleus at top_p {args.top_p} holds "
                  f"{sizes[len(sizes) // 2]} tokens (median; {sizes[0]}-{sizes[-1]})")
            print_times(aligner._model, rows, args)
        return
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
                print_times(aligner._model, [(logits_p, logits_b)], args)


if __name__ == "__main__":
    main()
