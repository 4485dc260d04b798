"""A 5-turn chat on one Aligner: how many prompt tokens each turn decodes
when the KV cache of the previous turn is reused, and when it is not
(``aligner.reset()`` before every turn). Both passes decode the same
transcript: the replies are those of the reuse pass.

Per turn and stream: ``reused`` prompt tokens found in the slot's cache,
``decoded`` tokens computed, and ``shared``: tokens of B's prompt taken from
P's cells instead of computed (the prefix both prompts share). ``prefill_s``
runs from the call to the first text delta: the prefill of both prompts and
the first sample.
"""
from __future__ import annotations

import time

from .workload import CHAT_TURNS, PRINCIPLE, SEED, TOP_P

__all__ = ["measure_multiturn"]


def _prefill_stats(aligner, gen) -> tuple[tuple[int, int], tuple[int, int], int]:
    """(reused, decoded, shared) of the prefill ``gen``'s submit planned, as
    the engine recorded it for the slot (stream P's reused count is also
    public as ``usage.prompt_tokens_details.cached_tokens``)."""
    engine = aligner.engine
    if hasattr(engine, "last_prefill"):
        stats = engine.last_prefill(gen.slot)
        return tuple(stats["reused"]), tuple(stats["decoded"]), int(stats["shared"])
    native = engine._native.last_prefill(gen.slot)  # an engine without the public accessor
    return tuple(native.reused), tuple(native.decoded), int(native.shared)


def _turn(aligner, messages, max_tokens: int) -> tuple[dict, list[int], str]:
    t0 = time.perf_counter()
    request = aligner.chat_request(messages, principle=PRINCIPLE, max_tokens=max_tokens, temperature=0.0,
                                   top_p=TOP_P, seed=SEED)
    gen = aligner.submit(request)  # plans the prefill; reading the stream runs it
    reused, decoded, shared = _prefill_stats(aligner, gen)
    prefill_s = None
    texts = []
    for delta in aligner.deltas(gen):
        if prefill_s is None:
            prefill_s = time.perf_counter() - t0
        texts.append(delta)
    if prefill_s is None:  # no text at all (an end-of-generation token first)
        prefill_s = time.perf_counter() - t0
    stats = {"reused": list(reused), "decoded": list(decoded), "shared": shared, "prefill_s": prefill_s}
    return stats, [len(request.prompt), len(request.base_prompt)], "".join(texts)


def measure_multiturn(aligner, *, max_tokens: int = 24) -> list[dict]:
    rows = []
    messages: list[dict] = []
    replies = []
    aligner.reset()
    for i, question in enumerate(CHAT_TURNS):
        messages.append({"role": "user", "content": question})
        stats, prompt_tokens, reply = _turn(aligner, messages, max_tokens)
        replies.append(reply)
        rows.append({"turn": i + 1, "prompt_tokens": prompt_tokens, "reuse": stats})
        messages.append({"role": "assistant", "content": reply})

    messages = []
    for i, question in enumerate(CHAT_TURNS):
        messages.append({"role": "user", "content": question})
        aligner.reset()
        rows[i]["no_reuse"], _, _ = _turn(aligner, messages, 1)
        messages.append({"role": "assistant", "content": replies[i]})
    aligner.reset()
    return rows
