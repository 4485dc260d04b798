"""One chat request's tool calling: the format the template speaks, the
conversation rewritten for it, the tools handed to the template, and the
grammar (eager or lazy) that keeps each call well formed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..options import SamplingOptions
from .formats import format_of_template, messages_for
from .grammar import call_grammar, triggers
from .request import ToolChoice, ToolRequestError, check_tool_choice, check_tool_messages, check_tools

__all__ = ["ToolCallPlan", "plan_tool_calls"]


@dataclass(frozen=True)
class ToolCallPlan:
    format: str                                  # formats.FORMATS
    choice: ToolChoice
    messages: list[dict[str, Any]]               # as the template takes them
    template_tools: list[dict[str, Any]] | None  # ``tools`` for the template (its own format), or None
    grammar: str | None
    triggers: tuple[str, ...]                    # non-empty: the grammar is lazy

    @property
    def parses_calls(self) -> bool:
        """Whether the answer may hold calls to read back out."""
        return self.choice.mode != "none"

    def sampling(self, options: SamplingOptions, *, align_tool_calls: bool = False) -> SamplingOptions:
        """``options`` with the call grammar. Alignment stays off inside a
        call unless ``align_tool_calls``: the combine can lift a token the
        grammar allows but the principled stream finds unlikely, such as
        another value than the one the user gave (docs/tools.md)."""
        if self.grammar is None:
            return options
        if options.grammar:
            raise ToolRequestError("tools", "tools: a request constrains its answer with tools or with "
                                            "response_format (a grammar), not both")
        return options.replace(grammar=self.grammar, grammar_triggers=self.triggers,
                               align_grammar=align_tool_calls)


def plan_tool_calls(template: str | None, messages: Sequence[Mapping[str, Any]], tools: Any = None,
                    tool_choice: Any = None, parallel_tool_calls: Any = None) -> ToolCallPlan | None:
    """The request's tool calling (None: it has no tools and its
    conversation no calls). ``messages`` went through validate_messages."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise ToolRequestError("parallel_tool_calls", "parallel_tool_calls must be true or false")
    checked = check_tools(tools)
    choice = check_tool_choice(tool_choice, checked)
    has_history = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    check_tool_messages(messages)
    if not checked and not has_history:
        return None  # ("auto" without tools asks for nothing; "required" and a name were refused above)
    fmt = format_of_template(template)
    offered = checked if choice.mode != "none" else ()
    rewritten = messages_for(fmt, messages, offered)
    template_tools = [t.as_openai() for t in offered] if fmt != "generic" and offered else None
    grammar, lazy = None, ()
    if offered:
        grammar = call_grammar(fmt, choice.callable, parallel=parallel_tool_calls is not False and choice.name is None)
        lazy = tuple(triggers(fmt)) if choice.mode == "auto" else ()
    return ToolCallPlan(fmt, choice, rewritten, template_tools, grammar, lazy)
