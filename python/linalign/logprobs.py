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
``plain_top_token`` is the most likely token the grammar allowed.) The engine
computes each entry natively in its step, while the logits are still in the
context (``cpp/token_logprobs.cpp``; ``tests/reference_logprobs.py`` is the
numpy form it is tested against); it costs a pass over each stream's logits
per token, so it is done only when asked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np


__all__ = ["MAX_TOP_LOGPROBS", "ZERO_LOGPROB", "TokenLogprob", "chat_logprobs", "completion_logprobs",
           "chat_top_logprobs", "completion_top_logprobs", "token_logprob"]

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


def token_logprob(token: int, piece: bytes, native: tuple, *, text_offset: int = 0) -> TokenLogprob:
    """A token's entry from the engine's step event (``StepEvent.logprob``):
    the native core computes the fields above while the logits the token was
    drawn from are still in the context (``cpp/token_logprobs.cpp``)."""
    (logprob, top, plain_top_token, plain_top_piece, plain_top_logprob, logprob_principled, logprob_plain, ratio,
     echo_guarded) = native
    return TokenLogprob(token=token, piece=piece, logprob=logprob, top=top, plain_top_token=plain_top_token,
                        plain_top_piece=plain_top_piece, plain_top_logprob=plain_top_logprob,
                        logprob_principled=logprob_principled, logprob_plain=logprob_plain,
                        text_offset=text_offset, ratio=ratio, echo_guarded=echo_guarded)


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
