"""An independent, plain-numpy implementation of ALGORITHM.md over two
separate llama_cpp.Llama contexts: the reference the native path is held to."""
from __future__ import annotations

import numpy as np


def nucleus_mask(logits: np.ndarray, top_p: float, temperature: float = 1.0) -> np.ndarray:
    """Boolean mask of the smallest set of tokens, by decreasing probability,
    whose mass before each token is < top_p (the first is always kept)."""
    if top_p >= 1.0:
        return np.ones(logits.shape, dtype=bool)
    t = temperature if temperature > 0 else 1.0
    z = (logits - logits.max()) / t
    p = np.exp(z.astype(np.float64))
    p /= p.sum()
    order = np.argsort(-logits, kind="stable")
    mass_before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
    keep = order[mass_before < top_p]
    mask = np.zeros(logits.shape, dtype=bool)
    mask[keep] = True
    return mask


def combine(logits_p: np.ndarray, logits_b: np.ndarray, ratio: float, top_p: float,
            temperature: float = 1.0) -> np.ndarray:
    """Steps 1-3: masked l_p + ratio * (l_p - l_0); -inf outside the nucleus."""
    out = logits_p.astype(np.float64) + ratio * (logits_p.astype(np.float64) - logits_b)
    out[~nucleus_mask(logits_p, top_p, temperature)] = -np.inf
    return out


def greedy_reference(llm_p, llm_b, tokens_p, tokens_b, *, ratio, top_p, n_tokens, logits_of, eog):
    """Greedy aligned decoding with two separate contexts, one token per
    context per step; returns the tokens and the first step's combined logits."""
    llm_p.reset()
    llm_b.reset()
    llm_p.eval(tokens_p)
    llm_b.eval(tokens_b)
    out, first = [], None
    for _ in range(n_tokens):
        combined = combine(logits_of(llm_p), logits_of(llm_b), ratio, top_p)
        if first is None:
            first = combined
        token = int(np.argmax(combined))
        if eog(token):
            break
        out.append(token)
        llm_p.eval([token])
        llm_b.eval([token])
    return out, first
