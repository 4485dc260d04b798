"""What a chat request says about tools: ``tools`` and ``tool_choice``
checked, and the conversation's tool calls and results matched up.

Every error is a :class:`ToolRequestError` (a ValueError) whose message
starts with the request field it is about (``tools[1].function.parameters:
...``), so that the server answers 400 with ``param`` set.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..grammar_limits import MAX_SCHEMA_BYTES, GrammarTooLarge, check_json_schema

__all__ = ["MAX_TOOLS", "Tool", "ToolChoice", "ToolRequestError", "check_tool_choice", "check_tool_messages",
           "check_tools"]

#: tools one request may declare: each is a branch of the call grammar
MAX_TOOLS = 128
# OpenAI's rule for function names
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolRequestError(ValueError):
    """Bad ``tools``, ``tool_choice`` or tool messages; ``param`` is the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of the arguments object

    def as_openai(self) -> dict[str, Any]:
        """The OpenAI shape, as chat templates read ``tools``."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    """``mode``: "none", "auto" or "required"; ``name``: the one function a
    named choice forces (mode "required")."""

    mode: str = "auto"
    name: str | None = None
    tools: tuple[Tool, ...] = field(default=())

    @property
    def callable(self) -> tuple[Tool, ...]:
        """The tools a call may name."""
        return tuple(t for t in self.tools if self.name is None or t.name == self.name)


def check_tools(tools: Any) -> tuple[Tool, ...]:
    """``tools`` as OpenAI sends it: ``[{"type": "function", "function":
    {"name", "description"?, "parameters"?}}]``; each schema within the
    grammar limits of ``response_format`` (linalign/grammar_limits.py)."""
    if tools is None:
        return ()
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        raise ToolRequestError("tools", "tools must be a list of {\"type\": \"function\", \"function\": {...}}")
    if len(tools) > MAX_TOOLS:
        raise ToolRequestError("tools", f"tools: at most {MAX_TOOLS} tools per request, got {len(tools)}")
    checked, names = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function" or not isinstance(tool.get("function"),
                                                                                                 Mapping):
            raise ToolRequestError("tools", f"{where}: must be {{\"type\": \"function\", \"function\": {{...}}}}")
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolRequestError("tools", f"{where}.function.name must be 1 to 64 letters, digits, _ or -; "
                                            f"got {name!r}")
        if name in names:
            raise ToolRequestError("tools", f"{where}.function.name: {name!r} is declared twice")
        names.add(name)
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise ToolRequestError("tools", f"{where}.function.description must be a string")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, Mapping):
            raise ToolRequestError("tools", f"{where}.function.parameters must be a JSON schema object")
        parameters = json.loads(json.dumps(parameters))  # a private copy (the converter writes into it)
        if parameters.get("type", "object") != "object":
            raise ToolRequestError("tools", f"{where}.function.parameters must describe an object (the arguments), "
                                            f"got type {parameters.get('type')!r}")
        if len(json.dumps(parameters, separators=(",", ":"))) > MAX_SCHEMA_BYTES:
            raise ToolRequestError("tools", f"{where}.function.parameters is beyond the server's grammar limits: "
                                            f"more than {MAX_SCHEMA_BYTES} bytes")
        try:
            check_json_schema(parameters)
        except GrammarTooLarge as e:
            raise ToolRequestError("tools", f"{where}.function.parameters is beyond the server's grammar limits: "
                                            f"{e}") from None
        checked.append(Tool(name, description, parameters))
    return tuple(checked)


def check_tool_choice(choice: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    """``tool_choice``: "none", "auto", "required" or ``{"type": "function",
    "function": {"name": ...}}`` naming one of ``tools``. Absent: "auto"
    with tools, "none" without (OpenAI's defaults)."""
    if choice is None:
        return ToolChoice("auto" if tools else "none", tools=tools)
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise ToolRequestError("tool_choice", f"tool_choice must be 'none', 'auto', 'required' or "
                                                  f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, "
                                                  f"got {choice!r}")
        if choice == "required" and not tools:
            raise ToolRequestError("tool_choice", "tool_choice 'required' needs tools")
        return ToolChoice(choice, tools=tools)
    function = choice.get("function") if isinstance(choice, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(choice, Mapping) or choice.get("type") != "function" or not isinstance(name, str):
        raise ToolRequestError("tool_choice", "tool_choice: a named choice is {\"type\": \"function\", "
                                              "\"function\": {\"name\": ...}}")
    if name not in {t.name for t in tools}:
        raise ToolRequestError("tool_choice", f"tool_choice names function {name!r}, which is not in tools")
    return ToolChoice("required", name, tools)


def check_tool_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """Each assistant ``tool_calls`` entry well formed (``arguments`` a JSON
    object, as a string), and each ``tool`` message answering a call made
    before it (``tool_call_id``)."""
    made: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        calls = message.get("tool_calls")
        if calls is not None:
            if role != "assistant":
                raise ToolRequestError("messages", f"messages[{i}]: only assistant messages hold tool_calls")
            if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes)):
                raise ToolRequestError("messages", f"messages[{i}].tool_calls must be a list")
            for j, call in enumerate(calls):
                where = f"messages[{i}].tool_calls[{j}]"
                function = call.get("function") if isinstance(call, Mapping) else None
                if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                    raise ToolRequestError("messages", f"{where} must be {{\"id\", \"type\": \"function\", "
                                                       f"\"function\": {{\"name\", \"arguments\"}}}}")
                arguments_of(function, where)
                if isinstance(call.get("id"), str):
                    made.add(call["id"])
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in made:
                raise ToolRequestError("messages", f"messages[{i}].tool_call_id: {call_id!r} answers no tool call "
                                                   "an assistant message made before it")


def arguments_of(function: Mapping[str, Any], where: str = "arguments") -> dict[str, Any]:
    """A call's arguments as an object: clients send a JSON string (OpenAI's
    shape), templates want the object (they apply ``tojson`` to it)."""
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise ToolRequestError("messages", f"{where}.function.arguments is not valid JSON ({e})") from None
    if not isinstance(arguments, Mapping):
        raise ToolRequestError("messages", f"{where}.function.arguments must be a JSON object")
    return dict(arguments)
