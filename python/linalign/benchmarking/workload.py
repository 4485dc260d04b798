"""The workload every method runs on: one chat request rendered twice by the
model's own template, with the principle in the system message (stream P)
and without it (stream B), as token ids so that every method decodes exactly
the same tokens."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Workload", "build_workload", "QUESTION", "PRINCIPLE", "CHAT_TURNS"]

QUESTION = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
PRINCIPLE = "The user is a five-year-old child; use very simple words."
# follow-up user messages of the multi-turn measurement (turn 1 is QUESTION)
CHAT_TURNS = [
    QUESTION,
    "What did the message say?",
    "Who wrote it, and why?",
    "How does the story end?",
    "Give the story a title.",
]
RATIO = 2.0
TOP_P = 0.8
SEED = 1234


@dataclass(frozen=True)
class Workload:
    prompt_p: list[int]  # with the principle
    prompt_b: list[int]  # without
    n_common_prefix: int  # leading tokens the two prompts share

    @property
    def n_prompt_tokens(self) -> int:
        return len(self.prompt_p) + len(self.prompt_b)


def build_workload(aligner) -> Workload:
    """Tokens of the benchmark request, rendered with ``aligner``'s chat template."""
    text_p, text_b = aligner.render_chat([{"role": "user", "content": QUESTION}], PRINCIPLE)
    tp = aligner.tokenize(text_p)
    tb = aligner.tokenize(text_b)
    n = 0
    while n < min(len(tp), len(tb)) and tp[n] == tb[n]:
        n += 1
    return Workload(tp, tb, n)
