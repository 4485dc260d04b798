"""Token lists of the two streams for one chat turn, exactly as
``Aligner.create_chat_completion`` builds them (chat template, principle
appended to the system message of stream P), with optional text after the
generation prompt (an assistant prefix such as "The best answer is").
"""
from __future__ import annotations

from typing import Any

from ..principles import DEFAULT_POSITION

__all__ = ["chat_messages", "stream_tokens"]


def chat_messages(user: str, system: str) -> list[dict[str, str]]:
    """One user turn, after a system message when ``system`` is not empty."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return messages


def stream_tokens(aligner: Any, messages: list[dict[str, str]], principle: str,
                  assistant_prefix: str = "", principle_position: str = DEFAULT_POSITION) -> tuple[list[int], list[int]]:
    """(P tokens, B tokens), built by ``Aligner.chat_tokens`` (BOS only where
    the template did not write one; the principle where ``principle_position``
    puts it). Raises ValueError past the context."""
    return aligner.chat_tokens(messages, principle, assistant_prefix=assistant_prefix,
                               principle_position=principle_position)
