"""OpenAI's response shapes, as llama-cpp-python returns them: completion and
chat chunks for streaming, and the whole response collected from them.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

from .engine import Generation

__all__ = ["ChatChunks", "CompletionChunks", "chat_chunks", "chunks_of", "collect_chat", "collect_completion",
           "completion_chunks"]


class CompletionChunks:
    """Builds ``text_completion`` chunks of one response."""

    def __init__(self, model: str) -> None:
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4()}", int(time.time()), model

    def _chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        }

    def first(self) -> dict[str, Any] | None:
        return None

    def delta(self, text: str) -> dict[str, Any]:
        return self._chunk(text, None)

    def last(self, gen: Generation) -> dict[str, Any]:
        chunk = self._chunk("", gen.finish_reason)
        chunk["usage"] = gen.usage()
        return chunk


class ChatChunks(CompletionChunks):
    """Builds ``chat.completion.chunk`` chunks of one response."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.id = f"chatcmpl-{uuid.uuid4()}"

    def _chat_chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def first(self) -> dict[str, Any] | None:
        return self._chat_chunk({"role": "assistant"}, None)

    def delta(self, text: str) -> dict[str, Any]:
        return self._chat_chunk({"content": text}, None)

    def last(self, gen: Generation) -> dict[str, Any]:
        chunk = self._chat_chunk({}, gen.finish_reason)
        chunk["usage"] = gen.usage()
        return chunk


def chunks_of(builder: CompletionChunks, deltas: Iterator[str], gen: Generation) -> Iterator[dict[str, Any]]:
    """Every chunk of a response, as ``deltas`` are produced."""
    first = builder.first()
    if first is not None:
        yield first
    for delta in deltas:
        yield builder.delta(delta)
    yield builder.last(gen)


def completion_chunks(deltas: Iterator[str], gen: Generation, model: str) -> Iterator[dict[str, Any]]:
    return chunks_of(CompletionChunks(model), deltas, gen)


def chat_chunks(deltas: Iterator[str], gen: Generation, model: str) -> Iterator[dict[str, Any]]:
    return chunks_of(ChatChunks(model), deltas, gen)


def collect_completion(chunks: Iterator[dict[str, Any]], model: str | None = None) -> dict[str, Any]:
    texts = []
    for chunk in chunks:
        texts.append(chunk["choices"][0]["text"])
        last = chunk
    return {
        "id": last["id"], "object": "text_completion", "created": last["created"], "model": model or last["model"],
        "choices": [{"text": "".join(texts), "index": 0, "logprobs": None,
                     "finish_reason": last["choices"][0]["finish_reason"]}],
        "usage": last["usage"],
    }


def collect_chat(chunks: Iterator[dict[str, Any]], model: str | None = None) -> dict[str, Any]:
    texts = []
    for chunk in chunks:
        texts.append(chunk["choices"][0]["delta"].get("content", ""))
        last = chunk
    return {
        "id": last["id"], "object": "chat.completion", "created": last["created"], "model": model or last["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(texts)}, "logprobs": None,
                     "finish_reason": last["choices"][0]["finish_reason"]}],
        "usage": last["usage"],
    }
