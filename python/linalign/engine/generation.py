"""One request in the engine: what it asks for (GenerationRequest) and how
far it has come (Generation: its slot, its text so far, why it finished).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..options import SamplingOptions
from ..text_stream import TextAssembler

__all__ = ["GenerationRequest", "Generation"]


@dataclass(frozen=True)
class GenerationRequest:
    """The token streams and options of one request."""

    prompt: Sequence[int]        # stream P: with the principle
    base_prompt: Sequence[int]   # stream B: without it (== prompt: plain decoding)
    options: SamplingOptions
    stop: tuple[str, ...] = ()   # the options' stop strings and the chat template's


@dataclass
class Generation:
    """A request's progress. The engine appends text deltas to it and marks
    it done; a consumer reads them with :meth:`pop_delta`.

    ``notify``, when given, is called (from the thread that stepped the
    engine) after every change, for consumers that wait elsewhere.
    """

    request: GenerationRequest
    limit: int
    notify: Callable[[], None] | None = None
    slot: int = -1
    order: int = 0              # submission order
    prompt_tokens: int = 0
    cached_tokens: int = 0      # prompt tokens of stream P found in the slot's cache
    completion_tokens: int = 0
    prefill: dict[str, object] = field(default_factory=dict)  # per stream (P, B): reused, decoded; B's shared
    finish_reason: str | None = None
    error: BaseException | None = None
    tokens: list[int] = field(default_factory=list)
    _deltas: deque[str] = field(default_factory=deque)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.prompt_tokens = len(self.request.prompt)
        self.assembler = TextAssembler(self.request.stop)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Asks the engine to free this request's slot at its next step
        (safe from any thread)."""
        self._cancelled.set()

    def pop_delta(self) -> str | None:
        return self._deltas.popleft() if self._deltas else None

    @property
    def has_delta(self) -> bool:
        return bool(self._deltas)

    def usage(self) -> dict[str, object]:
        """OpenAI's usage object; cached_tokens counts the prompt tokens of
        the principled stream that were not computed again."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    # -- written by the engine, under its lock ----------------------------

    def _push(self, delta: str) -> None:
        if delta:
            self._deltas.append(delta)

    def _finish(self, reason: str | None, error: BaseException | None = None) -> None:
        if self.done:
            return
        if error is None:
            tail = self.assembler.finish()
            self._push(tail)
            if self.assembler.stopped:
                reason = "stop"
        self.error = error
        self.finish_reason = reason if error is None else None
        self.slot = -1
