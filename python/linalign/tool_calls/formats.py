"""The tool-call formats: which one a chat template speaks, and the
conversation rewritten for it.

``hermes``
    Hermes 2 Pro / Qwen 2.5 and 3: the template renders ``tools`` itself and
    the model answers ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
    one block per call (several for parallel calls).
``llama3``
    Llama 3.1 / 3.2 / 3.3: the template renders ``tools`` itself and the
    model answers one JSON object ``{"name": ..., "parameters": {...}}``,
    possibly after ``<|python_tag|>``; one call per turn (the templates
    refuse more).
``generic``
    Any other template (the default SmolLM2's has no tools): the tools are
    written into the system message here, with an instruction to answer in
    the hermes form, and the conversation's calls and results are written as
    text: a call as its ``<tool_call>`` block in the assistant message, a
    result as a user message ``<tool_response>...</tool_response>`` (templates
    without tools often refuse a ``tool`` role).

The template's own formats get each call's ``arguments`` as an object
(Qwen's and Llama's templates apply ``tojson`` to them; clients send a JSON
string).
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from .request import Tool, arguments_of

__all__ = ["FORMATS", "GENERIC_INSTRUCTION", "format_of_template", "messages_for", "generic_system_text"]

FORMATS = ("hermes", "llama3", "generic")

# The generic form's instruction, before the tools' signatures (docs/tools.md).
GENERIC_INSTRUCTION = (
    "You can call functions to help with the user's request. Their signatures, as JSON schemas, are "
    "between <tools> and </tools>:"
)
GENERIC_CALL_INSTRUCTION = (
    "To call a function, answer with a JSON object holding its name and its arguments between "
    "<tool_call> and </tool_call>, one block per call:\n"
    "<tool_call>\n{\"name\": \"<function name>\", \"arguments\": {<arguments as JSON>}}\n</tool_call>\n"
    "A function's result comes back between <tool_response> and </tool_response>."
)


def format_of_template(template: str | None) -> str:
    """The format a chat template speaks (one of FORMATS)."""
    text = template or ""
    if "tools" not in text:
        return "generic"
    if "<tool_call>" in text:
        return "hermes"
    if "<|python_tag|>" in text or ("ipython" in text and "parameters" in text):
        return "llama3"
    return "generic"


def generic_system_text(tools: Sequence[Tool]) -> str:
    """The generic form's tool block, appended to the system message."""
    signatures = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
    return f"{GENERIC_INSTRUCTION}\n<tools>\n{signatures}\n</tools>\n{GENERIC_CALL_INSTRUCTION}"


def call_block(name: str, arguments: Mapping[str, Any]) -> str:
    """One call in the hermes form."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def messages_for(fmt: str, messages: Sequence[Mapping[str, Any]],
                 tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """``messages`` (checked by validate_messages and check_tool_messages) as
    the template of format ``fmt`` takes them; for the generic form with the
    ``tools`` written into the system message (none: nothing written)."""
    if fmt != "generic":
        out = []
        for i, message in enumerate(messages):
            message = dict(message)
            if not message.get("tool_calls"):
                # Llama's template tests 'tool_calls' in message: a null one is none
                message.pop("tool_calls", None)
            else:
                message["tool_calls"] = [
                    {**call, "function": {**call["function"],
                                          "arguments": arguments_of(call["function"], f"messages[{i}]")}}
                    for call in message["tool_calls"]]
            out.append(message)
        return out
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            blocks = [call_block(c["function"]["name"], arguments_of(c["function"], f"messages[{i}]"))
                      for c in message["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(([content] if content else []) + blocks)})
        elif role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("_tool_results"):  # results of parallel calls: one message
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
        else:
            out.append({"role": role, "content": content})
    for message in out:
        message.pop("_tool_results", None)
    if tools:
        block = generic_system_text(tools)
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{block}" if out[0]["content"] else block
        else:
            out.insert(0, {"role": "system", "content": block})
    return out
