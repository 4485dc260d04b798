"""The numpy form of a token's logprob entry (python/linalign/logprobs.py
documents the fields): what the engine computed in Python before issue 21,
kept as the reference that the native computation (cpp/token_logprobs.cpp)
is held to."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from linalign import _core
from linalign.logprobs import ZERO_LOGPROB, TokenLogprob
from linalign.options import AUTO_RATIO, SamplingOptions


def _log_softmax_at(logits: np.ndarray, *ids: int) -> list[float]:
    x = logits.astype(np.float64, copy=False)
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m).sum()))
    return [float(x[i]) - lse for i in ids]


def compute_token_logprob(token: int, piece: bytes, logits_p: np.ndarray, logits_b: np.ndarray,
                          options: SamplingOptions, k: int, piece_of: Callable[[int], bytes],
                          text_offset: int = 0, logits_extra: Sequence[np.ndarray] = (),
                          extra_ratios: Sequence[float | str] = (), *, ratios: Sequence[float] | None = None,
                          guarded: Sequence[tuple[int, int]] = (),
                          grammar_allowed: np.ndarray | None = None) -> TokenLogprob:
    """The entry of ``token``, drawn from ``logits_p``/``logits_b`` (and the
    further principled streams' logits, when several principles are
    composed) with ``options``, with its ``k`` most likely alternatives.

    ``ratios``: the step size the sampler applied at this token to each
    principled stream, P first (a step event's); ``None`` takes
    ``options.ratio`` and ``extra_ratios`` (``"auto"`` recomputed by the
    same rule). ``guarded``: the (stream, token) pairs whose boost the echo
    guard dropped at this token. ``grammar_allowed``: the token ids a grammar
    allowed at this position (None: no grammar)."""
    all_ratios = [options.ratio, *extra_ratios] if ratios is None else list(ratios)
    if len(all_ratios) != 1 + len(logits_extra):
        raise ValueError(f"ratios: one per principled stream ({1 + len(logits_extra)}), got {len(all_ratios)}")
    auto = [r == AUTO_RATIO for r in all_ratios]
    fixed = [0.0 if a else float(r) for r, a in zip(all_ratios, auto)]
    masked_p = logits_p
    if grammar_allowed is not None:
        # what the grammar handed the alignment step: P's candidates with the
        # rejected ones at -inf, in id order (the sampler's candidate path)
        masked_p = np.full_like(logits_p, -np.inf)
        masked_p[grammar_allowed] = logits_p[grammar_allowed]
    ids, aligned, applied, _ = _core.linear_alignment_step(
        masked_p, logits_b, fixed[0], options.top_p, options.temperature, grammar_allowed is None,
        list(logits_extra), fixed[1:], auto_ratio=auto[0], extra_auto=auto[1:] if any(auto[1:]) else [],
        guarded=[(int(s), int(t)) for s, t in guarded])
    x = aligned.astype(np.float64)
    finite = np.isfinite(x)
    ids, x = ids[finite], x[finite]  # a grammar's -inf candidates have probability 0
    m = float(x.max())
    logprobs = x - (m + float(np.log(np.exp(x - m).sum())))
    hit = np.flatnonzero(ids == token)
    logprob = float(logprobs[hit[0]]) if hit.size else ZERO_LOGPROB
    top = _top_entries(ids, logprobs, k, logits_p, grammar_allowed, piece_of) if k > 0 else ()
    if grammar_allowed is None:
        plain_top = int(np.argmax(logits_b))
    else:
        plain_top = int(grammar_allowed[np.argmax(logits_b[grammar_allowed])])
    plain_top_logprob, logprob_plain = _log_softmax_at(logits_b, plain_top, token)
    (logprob_principled,) = _log_softmax_at(logits_p, token)
    return TokenLogprob(token=token, piece=piece, logprob=logprob, top=top, plain_top_token=plain_top,
                        plain_top_piece=piece_of(plain_top), plain_top_logprob=plain_top_logprob,
                        logprob_principled=logprob_principled, logprob_plain=logprob_plain,
                        text_offset=text_offset, ratio=float(applied[0]),
                        echo_guarded=bool(guarded))


def _top_entries(ids: np.ndarray, logprobs: np.ndarray, k: int, logits_p: np.ndarray,
                 grammar_allowed: np.ndarray | None,
                 piece_of: Callable[[int], bytes]) -> tuple[tuple[bytes, float], ...]:
    """The ``k`` most likely candidates, then, when the nucleus holds fewer,
    stream P's next most likely tokens as fillers at ZERO_LOGPROB."""
    n = min(k, ids.size)
    best = np.argpartition(-logprobs, n - 1)[:n] if 0 < n < ids.size else np.arange(n)
    best = best[np.lexsort((ids[best], -logprobs[best]))]
    top = [(piece_of(int(ids[i])), float(logprobs[i])) for i in best]
    need = min(k, logits_p.size) - n
    if need > 0:
        # P's order, a grammar's rejected tokens after every allowed one
        order = logits_p.astype(np.float64)
        if grammar_allowed is not None:
            rejected = np.ones(order.size, dtype=bool)
            rejected[grammar_allowed] = False
            order[rejected] -= 1e9
        m = min(need + ids.size, order.size)
        pool = np.argpartition(-order, m - 1)[:m] if m < order.size else np.arange(order.size)
        pool = pool[np.lexsort((pool, -order[pool]))]
        taken = set(int(i) for i in ids)
        fillers = [int(t) for t in pool if int(t) not in taken][:need]
        top += [(piece_of(t), ZERO_LOGPROB) for t in fillers]
    return tuple(top)
