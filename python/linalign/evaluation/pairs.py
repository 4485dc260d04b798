"""Offline preference accuracy without a judge: each pair's ``chosen`` and
``rejected`` responses are scored by teacher-forced log-likelihood, and a
method is right on a pair when it gives ``chosen`` the higher one.

Every method is a decoding policy of ALGORITHM.md at temperature 1 applied at
every response position: the nucleus (``top_p``) of its own P stream, the
logits inside it, renormalised.

* ``none``: stream B (the prompt without the principle) alone;
* ``prompt``: stream P (the principle in the system message) alone;
* ``la@r``: ``l_p + r * (l_p - l_0)`` inside P's nucleus; ``la@0.0`` is
  ``prompt`` exactly.

A response token outside a policy's nucleus has probability zero there; it
is counted (``out_of_nucleus``) and charged ``floor`` nats instead of -inf.
``top_p = 1`` turns the mask off (plain likelihoods, nothing floored).

Each response costs one ``eval_logits`` call: one forward per stream over
the whole response, logits for every position.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ..options import AUTO_RATIO
from ..principles import DEFAULT_POSITION
from .chat_streams import chat_messages, stream_tokens
from .persona import DEFAULT_SYSTEM, method_name
from .scoring import auto_ratio, nucleus_mask, policy_log_probs, token_log_likelihood
from .stats import accuracy_summary

__all__ = ["DEFAULT_FLOOR", "evaluate_pairs"]

DEFAULT_FLOOR = -20.0  # nats per token, about 2e-9


def evaluate_pairs(
    aligner: Any,
    pairs: Sequence[dict[str, str]],
    *,
    ratios: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0),
    system: str = DEFAULT_SYSTEM,
    top_p: float = 0.8,
    floor: float = DEFAULT_FLOOR,
    progress: Callable[[int], None] | None = None,
    principle_position: str = DEFAULT_POSITION,
) -> dict[str, Any]:
    """Runs the protocol; returns the JSON-shaped result.

    Per method: ``accuracy`` (fraction of pairs with ll(chosen) >
    ll(rejected)), its Wilson 95% ``interval``, ``mean_margin`` (mean of
    ll(chosen) - ll(rejected), nats) and ``out_of_nucleus`` (fraction of
    response tokens floored). ``records`` holds every pair's log-likelihoods.
    """
    if not pairs:
        raise ValueError("no pairs to evaluate")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not (math.isfinite(floor) and floor < 0):
        raise ValueError(f"floor must be a negative log-probability, got {floor}")
    ratios = [r if r == AUTO_RATIO else float(r) for r in ratios]
    methods = ["none", "prompt"] + [method_name(r) for r in ratios]
    records = []
    n_tokens = 0
    n_outside = dict.fromkeys(methods, 0)
    for index, pair in enumerate(pairs):
        prompt_p, prompt_b = stream_tokens(aligner, chat_messages(pair["prompt"], system), pair["principle"],
                                           principle_position=principle_position)
        ll: dict[str, dict[str, float]] = {m: {} for m in methods}
        for side in ("chosen", "rejected"):
            response = aligner.tokenize(pair[side], add_bos=False, special=False)
            if not response:
                raise ValueError(f"pair {index + 1}: the {side} response has no tokens")
            longest = max(len(prompt_p), len(prompt_b)) + len(response)
            if longest >= aligner.n_ctx:
                raise ValueError(f"pair {index + 1}: prompt and {side} response take {longest} tokens, more than "
                                 f"the context window allows ({aligner.n_ctx} - 1)")
            n = len(response)
            logits_p, logits_b = aligner.eval_logits(prompt_p + response, prompt_b + response, n + 1, n + 1)
            # row j predicts response[j]; the last row predicts past the response
            l_p, l_0 = logits_p[:n].astype(np.float64), logits_b[:n].astype(np.float64)
            mask_p, mask_0 = nucleus_mask(l_p, top_p), nucleus_mask(l_0, top_p)
            policies = {"none": (l_0, l_0, 0.0, mask_0), "prompt": (l_p, l_p, 0.0, mask_p)}
            # "auto": a step per position, from the whole rows' divergence
            policies.update({method_name(r): (l_p, l_0, auto_ratio(l_p, l_0) if r == AUTO_RATIO else r, mask_p)
                             for r in ratios})
            for m, (a, b, r, mask) in policies.items():
                log_probs = policy_log_probs(a, b, r, top_p, mask=mask)
                total, outside = token_log_likelihood(log_probs, response, floor=floor)
                ll[m][side] = total
                n_outside[m] += outside
            n_tokens += n
        records.append({"pair": index, "log_likelihood": ll})
        if progress is not None:
            progress(1)

    n = len(records)
    margins = {m: [rec["log_likelihood"][m]["chosen"] - rec["log_likelihood"][m]["rejected"] for rec in records]
               for m in methods}
    correct = {m: sum(x > 0 for x in margins[m]) for m in methods}
    return {
        "protocol": "pairs",
        "n": n,
        "ratios": ratios,
        "methods": methods,
        "system": system,
        "top_p": top_p,
        "floor": floor,
        "principle_position": principle_position,
        **accuracy_summary({m: correct[m] for m in methods}, n),
        "mean_margin": {m: float(np.mean(margins[m])) for m in methods},
        "out_of_nucleus": {m: n_outside[m] / n_tokens for m in methods},
        "n_response_tokens": n_tokens,
        "records": records,
    }
