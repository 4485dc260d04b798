"""Log probabilities of generated tokens, in OpenAI's shapes, plus what the
alignment changed.

What a token's ``logprob`` is taken from
-----------------------------------------
The distribution the token was drawn from by the linear-alignment step: the
combined logits ``l = l_p + r * (l_p - l_0)`` restricted to the top-p nucleus
of P (``linalign._core.linear_alignment_apply``, with the request's top_p and
temperature, so that the nucleus is the one the sampler used, and the step
size ``r`` the sampler applied at that token: the request's ratio, or under
``ratio="auto"`` the one it set for that token; where the echo guard lowered
a candidate's logit, it is lowered here too),
normalised by a log-softmax over the surviving candidates, **at temperature
1** (the logits are not divided by the request's temperature, as in OpenAI's
and llama-cpp-python's logprobs; that keeps them defined for greedy decoding).
Top-k, min-p, the repetition penalties and the temperature that the rest of
the sampler chain applies afterwards are not in it.

``top_logprobs`` always holds the k entries asked for, most likely first, as
OpenAI's do. Tokens outside the nucleus have probability 0 in that
distribution: when the nucleus holds fewer than k tokens, the list is filled
with the next most likely tokens of stream P (the principled distribution's
order; a grammar's allowed tokens before its rejected ones), each with
logprob ``-9999.0``, OpenAI's stand-in for a probability of zero.

With a grammar (``response_format``) the grammar masks stream P's candidates
before the alignment step; the engine records which tokens it allowed at
each position, and the logprobs are those of the distribution actually
sampled: the nucleus taken among the allowed tokens, then aligned.

Each entry also carries a ``linalign`` object::

    plain_top_token     the most likely token of stream B, the prompt without
                        the principle (stream P's when B is not decoded:
                        ratio 0 or no principle; with a negative principle,
                        B is the prompt with that one)
    plain_top_logprob   its logprob under log_softmax(l_0)
    logprob_principled  the chosen token under log_softmax(l_p) (with several
                        principles: the first one's stream)
    logprob_plain       the chosen token under log_softmax(l_0)
    changed             whether the chosen token differs from plain_top_token
    ratio               the step size applied at this token (P's)
    echo_guarded        whether the echo guard took out a candidate at this
                        token (the next token of a copy of the principle):
                        the chosen token is then what P would say instead

(``l_p``, ``l_0``: full-vocabulary logits at temperature 1; under a grammar,
``plain_top_token`` is the most likely token the grammar allowed.) Computing
this copies both streams' logits each token, so it is done only when asked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import _core
from .options import AUTO_RATIO, SamplingOptions

__all__ = ["MAX_TOP_LOGPROBS", "ZERO_LOGPROB", "TokenLogprob", "chat_logprobs", "completion_logprobs",
           "compute_token_logprob", "chat_top_logprobs", "completion_top_logprobs"]

MAX_TOP_LOGPROBS = 20
# OpenAI's stand-in for a probability of zero (JSON has no -Infinity): the
# logprob of a top_logprobs filler outside the nucleus
ZERO_LOGPROB = -9999.0


def chat_top_logprobs(logprobs: Any, top_logprobs: Any) -> int | None:
    """The number of alternatives a chat request asks for (None: no
    logprobs); raises TypeError/ValueError naming the field."""
    if logprobs is not None and not isinstance(logprobs, bool):
        raise TypeError(f"logprobs must be true or false, got {type(logprobs).__name__}")
    if top_logprobs is not None:
        _check_k("top_logprobs", top_logprobs)
        if not logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
    if not logprobs:
        return None
    return 0 if top_logprobs is None else top_logprobs


def completion_top_logprobs(logprobs: Any) -> int | None:
    """The ``logprobs`` of a completion request: alternatives per token
    (None: no logprobs)."""
    if logprobs is None:
        return None
    _check_k("logprobs", logprobs)
    return logprobs


def _check_k(name: str, k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an integer in [0, {MAX_TOP_LOGPROBS}], got {type(k).__name__}")
    if not 0 <= k <= MAX_TOP_LOGPROBS:
        raise ValueError(f"{name} must be in [0, {MAX_TOP_LOGPROBS}], got {k}")


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log probabilities (see the module's doc)."""

    token: int
    piece: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...]   # (piece, logprob), most likely first
    plain_top_token: int
    plain_top_piece: bytes
    plain_top_logprob: float
    logprob_principled: float
    logprob_plain: float
    text_offset: int = 0                   # characters of the completion text before this token
    ratio: float = 0.0                     # the step size applied at this token (P's)
    echo_guarded: bool = False             # the echo guard took out a candidate here

    @property
    def changed(self) -> bool:
        return self.plain_top_token != self.token

    @property
    def text(self) -> str:
        return _text(self.piece)


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", "replace")


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


def _finite(x: float) -> float:
    return x if np.isfinite(x) else ZERO_LOGPROB


def _linalign(entry: TokenLogprob) -> dict[str, Any]:
    return {"plain_top_token": _text(entry.plain_top_piece), "plain_top_logprob": _finite(entry.plain_top_logprob),
            "logprob_principled": _finite(entry.logprob_principled), "logprob_plain": _finite(entry.logprob_plain),
            "changed": entry.changed, "ratio": _finite(entry.ratio), "echo_guarded": entry.echo_guarded}


def chat_logprobs(entries: Iterable[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's ``logprobs``: ``{"content": [...], "refusal": None}``."""
    return {
        "content": [
            {"token": e.text, "logprob": _finite(e.logprob), "bytes": list(e.piece),
             "top_logprobs": [{"token": _text(p), "logprob": _finite(lp), "bytes": list(p)} for p, lp in e.top],
             "linalign": _linalign(e)}
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: Sequence[TokenLogprob], offset_base: int = 0) -> dict[str, Any]:
    """A completion choice's legacy ``logprobs``: parallel lists, plus
    ``linalign`` (one object per token). ``top_logprobs`` holds the k most
    likely tokens and the chosen one, as in OpenAI's legacy API;
    ``text_offset`` counts characters from the start of the prompt given
    (a text prompt; 0 for token ids) as OpenAI's does."""
    tops = []
    for e in entries:
        top = {_text(p): _finite(lp) for p, lp in e.top}
        top[e.text] = _finite(e.logprob)
        tops.append(top)
    return {
        "tokens": [e.text for e in entries],
        "token_logprobs": [_finite(e.logprob) for e in entries],
        "top_logprobs": tops,
        "text_offset": [offset_base + e.text_offset for e in entries],
        "linalign": [_linalign(e) for e in entries],
    }
