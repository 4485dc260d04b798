"""The request fields the server does not parse: which of them change nothing
here (accepted), and which would change the answer (refused with a 400 that
names them). No field is ignored silently.

The list comes from what real clients send: the openai SDK's
``chat.completions.create`` and ``completions.create`` arguments, Open
WebUI's and Continue's OpenAI payloads, LangChain's ChatOpenAI, and the
llama-server and Ollama extras those clients add. A field sent as ``null``
is as if absent (some clients send every field they know of).

The fields the server implements are the request models' in ``schema.py``
(with ``cache_prompt`` and ``id_slot``, llama-server's, honoured there).
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["HARMLESS_FIELDS", "REFUSED_FIELDS", "refusal"]

# Fields that change nothing here, and why: accepted and not used.
HARMLESS_FIELDS: dict[str, str] = {
    "user": "an end-user id for the provider's abuse monitoring",
    "safety_identifier": "an end-user id for the provider's abuse monitoring",
    "store": "whether OpenAI stores the completion; nothing is stored here",
    "metadata": "tags for stored completions; nothing is stored here",
    "service_tier": "OpenAI's processing tier; there is one tier here",
    "prompt_cache_key": "OpenAI's prompt-cache routing hint; the slots' caches are matched by prefix here",
    "prediction": "a predicted output, which only speeds OpenAI up and never changes the answer",
    "keep_alive": "Ollama's time to keep the model loaded; it stays loaded here",
    "timings_per_token": "llama-server's per-token timings; not reported here (see GET /metrics)",
    "return_progress": "llama-server's prefill progress chunks; not sent here",
}

# When refused ones are acceptable after all: the value that asks for nothing.
_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "functions": lambda v: v == [],
    "function_call": lambda v: v in ("none", "auto"),
    "logit_bias": lambda v: v == {},
    "best_of": lambda v: v == 1 and not isinstance(v, bool),
    "modalities": lambda v: v == ["text"],
    "chat_template_kwargs": lambda v: v == {},
    "think": lambda v: v is False,
    "ignore_eos": lambda v: v is False,
}

_LEGACY = "is OpenAI's legacy form of tool calling: send tools and tool_choice"
# Fields that would change the answer and are not supported: why, in the 400.
REFUSED_FIELDS: dict[str, str] = {
    "functions": _LEGACY,
    "function_call": _LEGACY,
    "logit_bias": "is not supported by this server",
    "best_of": "is not supported by this server: one completion per request",
    "modalities": "is not supported by this server: text only (send [\"text\"] or leave it out)",
    "audio": "is not supported by this server: text only",
    "reasoning_effort": "is not supported by this server (a reasoning model's setting)",
    "verbosity": "is not supported by this server",
    "web_search_options": "is not supported by this server: it does not search the web",
    "n_probs": "is llama-server's: ask for logprobs with logprobs and top_logprobs (completions: logprobs)",
    "grammar": "is llama-server's: send response_format (json_object or json_schema)",
    "json_schema": "is llama-server's: send response_format {\"type\": \"json_schema\", ...}",
    "chat_template_kwargs": "is not supported by this server: the model's chat template takes no options here",
    "think": "is Ollama's: this server does not run a thinking mode",
    "ignore_eos": "is not supported by this server",
}


def refusal(extra: dict[str, Any]) -> tuple[str, str] | None:
    """The first of ``extra`` (fields no request model parses) that must be
    refused, as (field, message); None when every one is harmless."""
    for name, value in extra.items():
        if value is None or name in HARMLESS_FIELDS:
            continue
        if name in REFUSED_FIELDS:
            neutral = _NEUTRAL.get(name)
            if neutral is not None and neutral(value):
                continue
            return name, f"{name} {REFUSED_FIELDS[name]}"
        return name, (f"{name}: unknown field; this server does not implement it (the fields it takes, and "
                      "those it accepts without effect, are in docs/api.md)")
    return None
