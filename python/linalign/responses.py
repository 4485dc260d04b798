"""OpenAI's response shapes, as llama-cpp-python returns them: completion and
chat chunks for streaming, and the whole response collected from them.

With logprobs asked for, each chunk carries the entries of the tokens whose
text it completes (see :class:`~linalign.engine.Generation`), and the
collected response all of them (shapes in :mod:`linalign.logprobs`).

The last chunk, and the collected response, carry one field OpenAI's shapes
do not have: ``linalign``, what the alignment did over the answer
(``mean_ratio``: the mean step size applied, P's; ``mean_ratios``: each
principled stream's; ``echo_guarded_tokens``: tokens at which the echo guard
lowered a candidate), from :meth:`~linalign.engine.Generation.alignment`.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Iterable, Iterator, Union

from .engine import Generation
from .logprobs import TokenLogprob, chat_logprobs, completion_logprobs
from .tool_calls import ToolCallStream

__all__ = ["ChatChunks", "CompletionChunks", "chat_chunks", "chunks_of", "collect_chat", "collect_completion",
           "completion_chunks"]

# a text delta, or a text delta with the logprob entries of the tokens it completes
Delta = Union[str, "tuple[str, list[TokenLogprob]]"]


class CompletionChunks:
    """Builds ``text_completion`` chunks of one response.

    ``logprobs``: None (no logprobs) or the number of alternatives asked for;
    ``text_offset``: where the completion starts in the logprobs'
    ``text_offset`` (the prompt's length in characters, as OpenAI counts)."""

    def __init__(self, model: str, *, logprobs: int | None = None, text_offset: int = 0) -> None:
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4()}", int(time.time()), model
        self.logprobs, self.text_offset = logprobs, text_offset

    def _logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any] | None:
        if self.logprobs is None or not entries:
            return None
        return completion_logprobs(entries, self.text_offset)

    def _chunk(self, text: str, finish_reason: str | None, entries: list[TokenLogprob] = ()) -> dict[str, Any]:
        return {
            "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
            "choices": [{"text": text, "index": 0, "logprobs": self._logprobs(list(entries)),
                         "finish_reason": finish_reason}],
        }

    def first(self) -> dict[str, Any] | None:
        return None

    def delta(self, text: str, entries: list[TokenLogprob] = ()) -> dict[str, Any] | None:
        """A chunk of ``text``; None when there is nothing to send yet."""
        return self._chunk(text, None, entries)

    def tail(self) -> list[dict[str, Any]]:
        """Chunks between the last text delta and :meth:`last`."""
        return []

    def last(self, gen: Generation) -> dict[str, Any]:
        chunk = self._chunk("", gen.finish_reason, gen.final_logprobs)
        chunk["usage"] = gen.usage()
        chunk["linalign"] = gen.alignment()
        return chunk


class ChatChunks(CompletionChunks):
    """Builds ``chat.completion.chunk`` chunks of one response.

    ``tool_format`` (linalign.tool_calls): the answer may hold tool calls in
    this format; its text is held from where a call may begin, and the calls
    go out as ``delta.tool_calls`` chunks (one per call, whole) at the end,
    with ``finish_reason`` ``"tool_calls"``."""

    def __init__(self, model: str, *, logprobs: int | None = None, tool_format: str | None = None) -> None:
        super().__init__(model, logprobs=logprobs)
        self.id = f"chatcmpl-{uuid.uuid4()}"
        self._calls = ToolCallStream(tool_format) if tool_format else None
        self._held: list[TokenLogprob] = []  # entries of text held back
        self._n_calls = 0

    def _logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any] | None:
        if self.logprobs is None or not entries:
            return None
        return chat_logprobs(entries)

    def _chat_chunk(self, delta: dict[str, Any], finish_reason: str | None,
                    entries: list[TokenLogprob] = ()) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": self._logprobs(list(entries)),
                         "finish_reason": finish_reason}],
        }

    def first(self) -> dict[str, Any] | None:
        return self._chat_chunk({"role": "assistant"}, None)

    def delta(self, text: str, entries: list[TokenLogprob] = ()) -> dict[str, Any] | None:
        if self._calls is not None:
            text = self._calls.push(text)
            entries, self._held = self._held + list(entries), []
            if not text:
                self._held = entries
                return None
        return self._chat_chunk({"content": text}, None, entries)

    def tail(self) -> list[dict[str, Any]]:
        if self._calls is None:
            return []
        text, calls = self._calls.finish()
        entries, self._held = self._held, []
        chunks = [self._chat_chunk({"content": text}, None, entries)] if text else []
        if text:
            entries = []
        for i, call in enumerate(calls):
            chunks.append(self._chat_chunk({"tool_calls": [{"index": i, **call}]}, None, entries if i == 0 else []))
        if not chunks and entries:
            self._held = entries  # they go with the last chunk
        self._n_calls = len(calls)
        return chunks

    def last(self, gen: Generation) -> dict[str, Any]:
        reason = "tool_calls" if self._n_calls and gen.finish_reason == "stop" else gen.finish_reason
        chunk = self._chat_chunk({}, reason, self._held + list(gen.final_logprobs))
        chunk["usage"] = gen.usage()
        chunk["linalign"] = gen.alignment()
        return chunk


def chunks_of(builder: CompletionChunks, deltas: Iterable[Delta], gen: Generation) -> Iterator[dict[str, Any]]:
    """Every chunk of a response, as ``deltas`` are produced."""
    first = builder.first()
    if first is not None:
        yield first
    for delta in deltas:
        chunk = builder.delta(delta) if isinstance(delta, str) else builder.delta(*delta)
        if chunk is not None:
            yield chunk
    yield from builder.tail()
    yield builder.last(gen)


def completion_chunks(deltas: Iterable[Delta], gen: Generation, model: str) -> Iterator[dict[str, Any]]:
    return chunks_of(CompletionChunks(model, logprobs=gen.request.want_logprobs), deltas, gen)


def chat_chunks(deltas: Iterable[Delta], gen: Generation, model: str) -> Iterator[dict[str, Any]]:
    return chunks_of(ChatChunks(model, logprobs=gen.request.want_logprobs), deltas, gen)


def _merge_completion_logprobs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": [],
                               "linalign": []}
    for part in parts:
        for key, values in merged.items():
            values.extend(part[key])
    return merged


def collect_completion(chunks: Iterator[dict[str, Any]], model: str | None = None, *,
                       logprobs_asked: bool = False) -> dict[str, Any]:
    """The whole response from its chunks; ``logprobs_asked``: the logprobs
    field is an object even when no token came (not null)."""
    texts, logprobs = [], []
    for chunk in chunks:
        choice = chunk["choices"][0]
        texts.append(choice["text"])
        if choice["logprobs"] is not None:
            logprobs.append(choice["logprobs"])
        last = chunk
    return {
        "id": last["id"], "object": "text_completion", "created": last["created"], "model": model or last["model"],
        "choices": [{"text": "".join(texts), "index": 0,
                     "logprobs": _merge_completion_logprobs(logprobs) if logprobs or logprobs_asked else None,
                     "finish_reason": last["choices"][0]["finish_reason"]}],
        "usage": last["usage"],
        "linalign": last.get("linalign"),
    }


def collect_chat(chunks: Iterator[dict[str, Any]], model: str | None = None, *,
                 logprobs_asked: bool = False) -> dict[str, Any]:
    """As :func:`collect_completion`, for chat."""
    texts, content, calls = [], [], []
    for chunk in chunks:
        choice = chunk["choices"][0]
        texts.append(choice["delta"].get("content", ""))
        for call in choice["delta"].get("tool_calls", ()):
            if call["index"] == len(calls):
                calls.append({"id": call.get("id"), "type": "function",
                              "function": {"name": call["function"].get("name", ""), "arguments": ""}})
            calls[call["index"]]["function"]["arguments"] += call["function"].get("arguments", "")
        if choice["logprobs"] is not None:
            content.extend(choice["logprobs"]["content"])
        last = chunk
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["content"] = message["content"] or None  # OpenAI's: no prose, null
        message["tool_calls"] = calls
    return {
        "id": last["id"], "object": "chat.completion", "created": last["created"], "model": model or last["model"],
        "choices": [{"index": 0, "message": message,
                     "logprobs": {"content": content, "refusal": None} if content or logprobs_asked else None,
                     "finish_reason": last["choices"][0]["finish_reason"]}],
        "usage": last["usage"],
        "linalign": last.get("linalign"),
    }
