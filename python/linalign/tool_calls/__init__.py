"""Tool calling in OpenAI's shape (docs/tools.md).

    request.py  ``tools``, ``tool_choice`` and the conversation's calls, checked
    formats.py  the formats templates speak (hermes, llama3, generic)
    grammar.py  the call grammar from each function's schema; its triggers
    plan.py     one request's tool calling, put together
    parsing.py  calls read back out of the answer, whole or streamed
"""
from .formats import FORMATS, format_of_template
from .parsing import ParsedAnswer, ToolCallStream, parse_tool_calls
from .plan import ToolCallPlan, plan_tool_calls
from .request import MAX_TOOLS, Tool, ToolChoice, ToolRequestError

__all__ = ["FORMATS", "MAX_TOOLS", "ParsedAnswer", "Tool", "ToolCallPlan", "ToolCallStream", "ToolChoice",
           "ToolRequestError", "format_of_template", "parse_tool_calls", "plan_tool_calls"]
