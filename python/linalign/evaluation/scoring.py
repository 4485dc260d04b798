"""ALGORITHM.md's combine step in numpy, over the logit rows that
``Aligner.eval_logits`` returns: the nucleus mask of stream P, the linear
combination, and log-probabilities of given tokens under the result.

The native sampler does the same on one row at a time while generating; the
evaluation needs many rows at once (every position of a teacher-forced
response), so it works here on whole arrays.
"""
from __future__ import annotations

import numpy as np

__all__ = ["auto_ratio", "combine", "nucleus_mask", "log_softmax", "policy_log_probs", "token_log_likelihood"]


def combine(logits_p: np.ndarray, logits_b: np.ndarray, ratio: float | np.ndarray) -> np.ndarray:
    """``l_p + ratio * (l_p - l_0)``; at ratio 0 exactly ``l_p`` (for finite
    logits). ``ratio`` is a number, or one per row (``auto_ratio``'s)."""
    logits_p = np.asarray(logits_p, dtype=np.float64)
    logits_b = np.asarray(logits_b, dtype=np.float64)
    if logits_p.shape != logits_b.shape:
        raise ValueError(f"logits of the two streams differ in shape: {logits_p.shape} vs {logits_b.shape}")
    if np.ndim(ratio) == 0:
        return logits_p + float(ratio) * (logits_p - logits_b)
    return logits_p + np.asarray(ratio, dtype=np.float64)[..., None] * (logits_p - logits_b)


def auto_ratio(logits_p: np.ndarray, logits_b: np.ndarray) -> np.ndarray | float:
    """``ratio="auto"``'s step for each row (docs/auto_ratio.md):
    ``min(R_MAX, FLOOR + C * JSD)``, the Jensen-Shannon divergence in bits between
    the two streams' distributions at temperature 1 over the whole
    vocabulary, as the native sampler computes it. A 1-D pair of rows gives
    a number."""
    from .. import _core

    lp, lq = log_softmax(logits_p), log_softmax(logits_b)
    p, q = np.exp(lp), np.exp(lq)
    with np.errstate(divide="ignore", invalid="ignore"):
        lm = np.log((p + q) / 2)
        kl_p = np.where(p > 0, p * (lp - lm), 0.0).sum(axis=-1)
        kl_q = np.where(q > 0, q * (lq - lm), 0.0).sum(axis=-1)
    jsd = np.clip((kl_p + kl_q) / 2 / np.log(2), 0.0, 1.0)
    r = np.minimum(_core.AUTO_RATIO_MAX, _core.AUTO_RATIO_FLOOR + _core.AUTO_RATIO_SCALE * jsd)
    return float(r) if np.ndim(r) == 0 else r


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax; ``-inf`` entries stay ``-inf``."""
    logits = np.asarray(logits, dtype=np.float64)
    top = np.max(logits, axis=-1, keepdims=True)
    shifted = logits - top
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def nucleus_mask(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Row-wise top-p nucleus of ``softmax(logits)``: the tokens, by decreasing
    probability, whose probability mass *before* them is < ``top_p``; the most
    probable token is always kept. ``top_p >= 1`` keeps every token."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    if top_p >= 1.0:
        return np.ones(logits.shape, dtype=bool)
    order = np.argsort(-logits, axis=-1, kind="stable")
    probs = np.exp(log_softmax(logits))
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before < top_p
    keep_sorted[..., 0] = True
    mask = np.zeros(logits.shape, dtype=bool)
    np.put_along_axis(mask, order, keep_sorted, axis=-1)
    return mask


def policy_log_probs(logits_p: np.ndarray, logits_b: np.ndarray, ratio: float | np.ndarray, top_p: float, *,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Log-probabilities of the aligned policy (ALGORITHM.md steps 1-3 at
    temperature 1): combined logits, restricted to the nucleus of
    ``softmax(l_p)``, renormalised. Tokens outside the nucleus get ``-inf``.
    ``mask`` is that nucleus when already computed (it depends on ``l_p``
    and ``top_p`` only, not on the ratio)."""
    if mask is None:
        mask = nucleus_mask(logits_p, top_p)
    logits = combine(logits_p, logits_b, ratio)
    logits = np.where(mask, logits, -np.inf)
    return log_softmax(logits)


def token_log_likelihood(log_probs: np.ndarray, tokens: list[int], *, floor: float) -> tuple[float, int]:
    """Sum of ``log_probs[j, tokens[j]]``, each term clipped below at ``floor``.

    A token outside the policy's nucleus has probability zero (``-inf``);
    it is charged ``floor`` instead so one such token does not make every
    response equally impossible. Returns (sum, number of tokens outside the
    nucleus).
    """
    if log_probs.shape[0] != len(tokens):
        raise ValueError(f"{log_probs.shape[0]} logit rows for {len(tokens)} tokens")
    picked = log_probs[np.arange(len(tokens)), np.asarray(tokens, dtype=np.int64)]
    return float(np.sum(np.maximum(picked, floor))), int(np.count_nonzero(np.isneginf(picked)))
