"""The combine step alone (the linear-alignment sampler as the engine runs it
without a grammar: nucleus of P, ``l_p + r (l_p - l_0)``, mask, straight from
the logits), timed in C++ on real logits.

The model's own vocabulary uses the logits the model gives for the benchmark
prompts. A 152k vocabulary (Qwen2's 151936) is built from the same real
logits: the vector is repeated with each further copy permuted at random and
shifted down by ``copy * 4`` nats (so the original tokens stay the head of
the distribution and the copies add a realistic long tail), then cut to
151936 entries.
"""
from __future__ import annotations

import statistics

import numpy as np

from .. import _core
from .workload import RATIO, TOP_P, Workload

__all__ = ["VOCAB_152K", "extend_logits", "time_combine"]

VOCAB_152K = 151936
_SHIFT_PER_COPY = 4.0


def extend_logits(logits: np.ndarray, n_vocab: int, *, seed: int = 0) -> np.ndarray:
    """Real logits stretched to ``n_vocab`` entries as the module doc says."""
    rng = np.random.default_rng(seed)
    parts = [np.asarray(logits, dtype=np.float32)]
    copy = 1
    while sum(len(p) for p in parts) < n_vocab:
        parts.append(logits[rng.permutation(len(logits))].astype(np.float32) - copy * _SHIFT_PER_COPY)
        copy += 1
    return np.ascontiguousarray(np.concatenate(parts)[:n_vocab])


def _nucleus_size(lp: np.ndarray) -> int:
    p = np.sort(np.exp(lp - lp.max()))[::-1]
    p /= p.sum()
    return int(((np.cumsum(p) - p) < TOP_P).sum())


def time_combine(aligner, workload: Workload, *, n_iter: int = 300, reps: int = 5) -> dict:
    """Microseconds per combine at the model's vocabulary and at 152k (median, min, max over ``reps``)."""
    lp, lb = aligner.eval_logits(workload.prompt_p, workload.prompt_b, 1, 1)
    aligner.reset()
    lp, lb = np.ascontiguousarray(lp[0]), np.ascontiguousarray(lb[0])
    cases = {
        "model_vocab": (lp, lb, "real logits of the benchmark prompts"),
        "vocab_152k": (extend_logits(lp, VOCAB_152K, seed=1), extend_logits(lb, VOCAB_152K, seed=2),
                       f"real logits extended to {VOCAB_152K}: permuted copies shifted down 4 nats per copy"),
    }
    out = {}
    for key, (a, b, how) in cases.items():
        _core.time_combine_us(a, b, 20, RATIO, TOP_P)  # warm-up
        samples = [_core.time_combine_us(a, b, n_iter, RATIO, TOP_P) for _ in range(reps)]
        out[key] = {
            "n_vocab": int(len(a)), "logits": how, "nucleus_tokens": _nucleus_size(a),
            "us_median": statistics.median(samples), "us_min": min(samples), "us_max": max(samples),
            "n_iter": n_iter, "reps": reps,
        }
    return out
