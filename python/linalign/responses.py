"""OpenAI's response shapes, as llama-cpp-python returns them: completion and
chat chunks for streaming, and the whole response collected from them.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

from .engine import Generation

__all__ = ["completion_chunks", "chat_chunks", "collect_completion", "collect_chat"]


def completion_chunks(deltas: Iterator[str], gen: Generation, model: str) -> Iterator[dict[str, Any]]:
    """``text_completion`` chunks: one per text delta, then the finish reason and usage."""
    completion_id = f"cmpl-{uuid.uuid4()}"
    created = int(time.time())

    def chunk(text: str, finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": completion_id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        }

    for delta in deltas:
        yield chunk(delta, None)
    last = chunk("", gen.finish_reason)
    last["usage"] = gen.usage()
    yield last


def chat_chunks(deltas: Iterator[str], gen: Generation, model: str) -> Iterator[dict[str, Any]]:
    """``chat.completion.chunk`` chunks: the role, one per text delta, then the finish reason and usage."""
    completion_id = f"chatcmpl-{uuid.uuid4()}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    yield chunk({"role": "assistant"}, None)
    for delta in deltas:
        yield chunk({"content": delta}, None)
    last = chunk({}, gen.finish_reason)
    last["usage"] = gen.usage()
    yield last


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
