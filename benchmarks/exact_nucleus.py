"""The sampler's exact nucleus (sampling at temperature > 0, and greedy
decoding with penalties) on the default model's logits, in three shapes:
as the model gives them, sharpened as temperature 0.3 sharpens them, and
with a grammar's mask (-inf on 99% of the vocabulary, as a JSON or tool-call
grammar leaves it).

    python benchmarks/exact_nucleus.py [--calls 300] [--reps 7] [--top-p 0.95]

Times ``_core.time_combine_us`` (the linear-alignment sampler's dense
apply, natively, in a loop) on the last prompt position's logits of a chat
request's two streams, plain (ratio 0) and aligned (ratio 2), and prints µs
per call: the min and the median of the repetitions. A logit far below the
best one (the tail of a peaked row, a masked token) is where the vector
expf once took its slow path (docs/overhead.md, item 10).
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np

import linalign
from linalign import _core
from linalign.default_model import default_model_path

MESSAGES = [{"role": "user", "content": "Tell me about the history of Rome in a few sentences."}]
PRINCIPLE = "Answer like a pirate."


def shapes(logits_p: np.ndarray, logits_b: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    masked = np.random.default_rng(0).random(logits_p.size) < 0.99
    masked[int(np.argmax(logits_p))] = False  # the grammar allows something
    mask_p, mask_b = logits_p.copy(), logits_b.copy()
    mask_p[masked] = -np.inf
    mask_b[masked] = -np.inf
    return {
        "as given (temperature 1)": (logits_p, logits_b),
        "sharpened (temperature 0.3)": (logits_p / np.float32(0.3), logits_b / np.float32(0.3)),
        "grammar mask (-inf on 99%)": (mask_p, mask_b),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300, help="sampler calls per repetition")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--top-p", type=float, default=0.95)
    args = ap.parse_args()
    with linalign.Aligner(model_path=str(default_model_path()), n_ctx=512, n_threads=2, seed=0,
                          verbose=False) as aligner:
        request = aligner.chat_request(messages=MESSAGES, principle=PRINCIPLE, ratio=2.0)
        rows_p, rows_b = aligner.engine.eval_logits(list(request.prompt), list(request.base_prompt))
        logits_p = np.ascontiguousarray(rows_p[-1], dtype=np.float32)
        logits_b = np.ascontiguousarray(rows_b[-1], dtype=np.float32)
    print(f"default model, vocabulary {logits_p.size:,}; top_p {args.top_p}; us per call, min [median] of {args.reps}")
    for name, (p, b) in shapes(logits_p, logits_b).items():
        cells = []
        for label, ratio in (("plain", 0.0), ("aligned r=2", 2.0)):
            us = [_core.time_combine_us(p, b, n_iter=args.calls, ratio=ratio, top_p=args.top_p, dense=True)
                  for _ in range(args.reps)]
            cells.append(f"{label} {min(us):7.1f} [{statistics.median(us):7.1f}]")
        print(f"  {name:30s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
