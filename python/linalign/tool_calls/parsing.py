"""Tool calls read back out of the model's text, whole or as it streams.

:func:`parse_tool_calls` splits an answer into its prose and its calls, in
OpenAI's shape (``{"id", "type": "function", "function": {"name",
"arguments": <JSON string>}}``). :class:`ToolCallStream` does it for a
stream: prose goes out as it comes, and from the moment the text may be
opening a call it is held until the answer ends, then sent as
``delta.tool_calls`` (a stream cannot take back prose it already sent).
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = ["ParsedAnswer", "ToolCallStream", "parse_tool_calls"]

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"
_DECODER = json.JSONDecoder()


@dataclass
class ParsedAnswer:
    content: str
    tool_calls: list[dict[str, Any]]


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _object_at(text: str, start: int) -> tuple[dict[str, Any] | None, int]:
    """The JSON object at ``text[start:]`` (after whitespace) and where it ends."""
    while start < len(text) and text[start].isspace():
        start += 1
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        return None, start
    return (value if isinstance(value, dict) else None), end


def _hermes(text: str) -> ParsedAnswer | None:
    first = text.find(_OPEN)
    if first < 0:
        return None
    calls, at = [], first
    while at >= 0:
        value, end = _object_at(text, at + len(_OPEN))
        if value is None or not isinstance(value.get("name"), str):
            if calls and text.find(_OPEN, at + 1) < 0:
                break  # the last call, cut short (max_tokens): the complete ones stand
            return None  # not a call after all: prose that says <tool_call>
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        calls.append(_call(value["name"], arguments))
        close = text.find(_CLOSE, end)
        at = text.find(_OPEN, close if close >= 0 else end)
    return ParsedAnswer(text[:first].strip(), calls)


def _llama3(text: str) -> ParsedAnswer | None:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):]
    value, end = _object_at(body, 0)
    if value is None or not isinstance(value.get("name"), str) or body[end:].strip():
        return None
    arguments = value.get("parameters", value.get("arguments", {}))
    if not isinstance(arguments, dict):
        return None
    return ParsedAnswer("", [_call(value["name"], arguments)])


def parse_tool_calls(text: str, fmt: str) -> ParsedAnswer:
    """``text`` split into prose and calls in format ``fmt``; text that
    holds no well-formed call is all prose."""
    parsed = _llama3(text) if fmt == "llama3" else _hermes(text)
    return parsed if parsed is not None else ParsedAnswer(text, [])


class ToolCallStream:
    """Splits a streamed answer: :meth:`push` returns the prose that is
    safe to send now; :meth:`finish` the rest of the prose and the calls."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self._text = ""
        self._sent = 0          # characters of _text sent as prose
        self._holding = False   # a call may have begun: hold everything
        self._prose = False     # llama3: the answer is prose, never a call

    def _cut(self) -> int:
        """How much of the text is prose for sure."""
        text = self._text
        if self.fmt == "llama3":
            # the JSON form is the whole answer: hold while it may be one
            head = text.lstrip()
            if self._prose:
                return len(text)
            if head.startswith("{") or head.startswith(_PYTHON_TAG):
                self._holding = True
                return self._sent
            if not head or _PYTHON_TAG.startswith(head):
                return self._sent
            self._prose = True
            return len(text)
        at = text.find(_OPEN)
        if at >= 0:
            self._holding = True
            return at
        for k in range(min(len(_OPEN) - 1, len(text)), 0, -1):  # a partial "<tool_call>" at the end
            if _OPEN.startswith(text[-k:]):
                return len(text) - k
        return len(text)

    def push(self, delta: str) -> str:
        self._text += delta
        if self._holding:
            return ""
        cut = self._cut()
        start, self._sent = self._sent, max(self._sent, cut)
        return self._text[start:self._sent]

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """The prose not sent yet and the answer's calls."""
        parsed = parse_tool_calls(self._text, self.fmt)
        if not parsed.tool_calls:
            return self._text[self._sent:], []
        first = self._text.find(_OPEN) if self.fmt != "llama3" else self._sent
        return self._text[self._sent:max(first, self._sent)].rstrip(), parsed.tool_calls
