"""The GBNF grammar of a tool call, and the patterns that start it.

Each function's arguments are constrained by its ``parameters`` schema,
converted by the converter ``response_format`` uses (llama-cpp-python's
``SchemaConverter``) within the same limits (linalign.grammar_limits), so
that whatever the ratio, a call names a declared function and its
arguments parse and validate. One converter holds every function's rules,
each visited under a name of its own (``tool-3-arguments``), and each
resolving its ``$ref``s in its own document.

``tool_choice`` "auto" makes the grammar lazy: it waits until the output
opens a call (the patterns below, llama.cpp's lazy grammar) and then
constrains the rest of it: calls only, then the end of the turn.
"required" and a named function make it eager: the answer is the call.
"""
from __future__ import annotations

import json
from typing import Sequence

from llama_cpp.llama_grammar import SchemaConverter

from ..grammar_limits import GrammarTooLarge, check_gbnf
from .request import Tool, ToolRequestError

__all__ = ["call_grammar", "triggers"]

# Between the parts of a call: what models write there (a line break, a
# space), bounded so that a grammar cannot be held open by whitespace.
_WS = 'tool-ws ::= [ \\t\\n]{0,4}'


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF string literal: JSON's escapes are GBNF's


def _call_object(converter: SchemaConverter, tools: Sequence[Tool], key: str) -> str:
    """The rule body of one call's JSON object, ``{"name": ..., key: ...}``,
    with one branch per function."""
    branches = []
    for i, tool in enumerate(tools):
        schema = converter.resolve_refs(json.loads(json.dumps(tool.parameters)), f"tool-{i}")
        rule = converter.visit(schema, f"tool-{i}-arguments")
        branches.append(f'{_literal(json.dumps(tool.name))} space "," space {_literal(json.dumps(key))} space ":" '
                        f'space {rule}')
    return f'"{{" space {_literal(json.dumps("name"))} space ":" space ( {" | ".join(branches)} ) space "}}"'


def call_grammar(fmt: str, tools: Sequence[Tool], *, parallel: bool = True) -> str:
    """GBNF for calls to ``tools`` in format ``fmt`` (formats.FORMATS):
    the hermes and generic forms, one ``<tool_call>`` block (several with
    ``parallel``); llama3, one object after an optional ``<|python_tag|>``."""
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        if fmt == "llama3":
            call = _call_object(converter, tools, "parameters")
            root = 'root ::= "<|python_tag|>"? tool-ws tool-call'
        else:
            call = f'"<tool_call>" tool-ws {_call_object(converter, tools, "arguments")} tool-ws "</tool_call>"'
            root = 'root ::= tool-call' + (' (tool-ws tool-call)*' if parallel else '')
        grammar = "\n".join([root, f"tool-call ::= {call}", _WS, converter.format_grammar()])
    except GrammarTooLarge:
        raise
    except Exception as e:  # the converter raises assorted errors on schemas it cannot express
        raise ToolRequestError("tools", f"tools: a function's parameters use a schema the grammar converter "
                                        f"cannot express ({type(e).__name__}: {e})") from None
    try:
        check_gbnf(grammar)
    except GrammarTooLarge as e:
        raise ToolRequestError("tools", f"tools: the call grammar is beyond the server's grammar limits: {e}") from None
    return grammar


def triggers(fmt: str) -> list[str]:
    """The patterns that start the lazy grammar of format ``fmt``: the
    opening of a call. A pattern is searched in the output so far (a call may
    follow prose); the grammar is fed the output from the match on."""
    if fmt == "llama3":
        # the JSON form is the whole turn: only at its start (^...$: matched whole)
        return ["<\\|python_tag\\|>", '^\\s*(\\{\\s*"name")[\\s\\S]*$']
    return ["<tool_call>"]
