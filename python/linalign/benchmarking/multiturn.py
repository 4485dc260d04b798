"""A 5-turn chat on one Aligner: how many prompt tokens each turn decodes
when the KV cache of the previous turn is reused, and when it is not
(``engine.clear()`` before every turn). Both passes decode the same
transcript: the replies are those of the reuse pass."""
from __future__ import annotations

import time

from .workload import CHAT_TURNS, PRINCIPLE, SEED, TOP_P

__all__ = ["measure_multiturn"]


def _turn(aligner, messages, max_tokens: int) -> tuple[dict, float, str]:
    t0 = time.perf_counter()
    chunks = aligner.create_chat_completion(messages, principle=PRINCIPLE, max_tokens=max_tokens, temperature=0.0,
                                            top_p=TOP_P, seed=SEED, stream=True)
    prefill_s = time.perf_counter() - t0  # the call prefills before it returns
    stats = aligner.last_prefill
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    return stats, prefill_s, text


def measure_multiturn(aligner, *, max_tokens: int = 24) -> list[dict]:
    rows = []
    messages: list[dict] = []
    replies = []
    aligner.engine.clear()
    for i, question in enumerate(CHAT_TURNS):
        messages.append({"role": "user", "content": question})
        stats, prefill_s, reply = _turn(aligner, messages, max_tokens)
        replies.append(reply)
        prompt_tokens = [r + d for r, d in zip(stats["reused"], stats["decoded"])]
        rows.append({"turn": i + 1, "prompt_tokens": prompt_tokens,
                     "reuse": {"reused": list(stats["reused"]), "decoded": list(stats["decoded"]),
                               "shared": stats["shared"], "prefill_s": prefill_s}})
        messages.append({"role": "assistant", "content": reply})

    messages = []
    for i, question in enumerate(CHAT_TURNS):
        messages.append({"role": "user", "content": question})
        aligner.engine.clear()
        stats, prefill_s, _ = _turn(aligner, messages, 1)
        rows[i]["no_reuse"] = {"reused": list(stats["reused"]), "decoded": list(stats["decoded"]),
                               "shared": stats["shared"], "prefill_s": prefill_s}
        messages.append({"role": "assistant", "content": replies[i]})
    aligner.engine.clear()
    return rows
