"""Request bodies of the OpenAI-compatible server and their mapping onto
SamplingOptions and the Aligner's token streams; OpenAI-style error bodies.

Validation is strict: wrong JSON types, NaN or infinities, out-of-range
numbers and unsupported options are refused with a message naming the field.
So is a field the server does not implement, unless it is one of the fields
that change nothing here (:mod:`.request_fields`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Literal

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from ..aligner import Aligner
from ..chat import validate_messages
from ..engine import GenerationRequest
from ..logprobs import chat_top_logprobs, completion_top_logprobs
from ..options import SamplingOptions
from ..principles import Composition, compose
from ..tool_calls import ToolRequestError
from ..grammar_limits import GrammarTooLarge, check_gbnf, check_json_schema
from .presets import Preset
from .request_fields import HARMLESS_FIELDS, refusal

__all__ = [
    "ApiError",
    "ChatCompletionRequest",
    "CompletionRequest",
    "error_body",
    "parse_request",
    "param_of_error",
    "supported_fields",
]

# Request fields named otherwise than SamplingOptions' fields.
_OPTION_TO_REQUEST = {"ratio": "alignment_ratio", "grammar": "response_format"}
# SamplingOptions fields a request sets under their own name.
_SAME_NAME = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
              "seed", "stop", "echo_guard", "echo_guard_n")


class ApiError(Exception):
    """An error answered with an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def param_of_error(message: str) -> str | None:
    """The request field an Aligner error message starts with, if any."""
    head = message.split(" ", 1)[0].split("[", 1)[0].split(".", 1)[0].rstrip(":")
    head = _OPTION_TO_REQUEST.get(head, head)
    fields = set(ChatCompletionRequest.model_fields) | set(CompletionRequest.model_fields)
    return head if head in fields else None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class _SamplingRequest(BaseModel):
    """Fields shared by both endpoints. ``None`` means the default. Only JSON
    types are checked here; ranges are SamplingOptions' to check."""

    # unknown fields are kept to be judged by request_fields.refusal
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: str | None = None
    principle: str | None = None
    # [{"text": ..., "ratio": ...}, ...]: checked by linalign.principles.compose
    principles: list[Any] | None = None
    negative_principle: str | None = None
    principle_position: str | None = None  # "system" or "end" (linalign.principles.POSITIONS; default "end")
    alignment_ratio: float | str | None = None  # a number or "auto" (SamplingOptions checks which)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    echo_guard: bool | None = None
    echo_guard_n: int | None = None
    n: int | None = Field(None, ge=1, le=1)  # one choice per request
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # llama-server's: reuse the slot's cached prefix (default: the server's
    # --cache-prompt), and the slot to run in (-1: the server picks)
    cache_prompt: bool | None = None
    id_slot: int | None = None
    # the positive principles the request composed, once generation_request ran (metrics)
    _principles: int = PrivateAttr(default=0)

    @property
    def principles_composed(self) -> int:
        return self._principles

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_options(self, default_max_tokens: int | None, preset: Preset | None = None) -> SamplingOptions:
        """The request's SamplingOptions, over the preset's defaults (if its
        ``model`` names one); out-of-range values are a 400 naming the field."""
        given: dict[str, Any] = preset.defaults() if preset is not None else {}
        given.update({name: getattr(self, name) for name in _SAME_NAME if getattr(self, name) is not None})
        if self.alignment_ratio is not None:
            given["ratio"] = self.alignment_ratio
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if max_tokens is None:
            max_tokens = given.get("max_tokens", default_max_tokens)
        given["max_tokens"] = max_tokens
        given["grammar"] = _grammar(self.response_format)
        try:
            return SamplingOptions.from_kwargs(**given)
        except (TypeError, ValueError) as e:
            raise ApiError(400, _request_names(str(e)), param=param_of_error(str(e))) from None

    def composition(self, options: SamplingOptions, preset: Preset | None) -> Composition:
        """The request's principles, each field absent from the request taken
        from the preset (its principle or principles together: a request
        that sets either form sets both); a 400 naming the field when they
        do not compose."""
        own = self.principle is not None or self.principles is not None
        principle = self.principle if own or preset is None else preset.principle
        principles = self.principles if own or preset is None else preset.principles
        negative = self.negative_principle
        if negative is None and preset is not None:
            negative = preset.negative_principle
        position = self.principle_position
        if position is None and preset is not None:
            position = preset.principle_position
        try:
            composition = compose(principle=principle, principles=principles, negative_principle=negative,
                                  ratio=options.ratio, ratio_given=self.alignment_ratio is not None,
                                  ratio_name="alignment_ratio", principle_position=position)
        except (TypeError, ValueError) as e:
            raise ApiError(400, str(e), param=param_of_error(str(e))) from None
        self._principles = len(composition.principles)
        return composition

    def per_request(self, request: GenerationRequest, aligner: Aligner) -> GenerationRequest:
        """``request`` with this request's cache_prompt and id_slot."""
        slot = self.id_slot
        if slot is not None and slot != -1:
            n_slots = aligner.engine.n_slots
            if not 0 <= slot < n_slots:
                raise ApiError(400, f"id_slot must be -1 (any) or a slot in [0, {n_slots - 1}], got {slot}",
                               param="id_slot")
        else:
            slot = None
        return dataclasses.replace(request, cache_prompt=self.cache_prompt, slot=slot)

    def check_streams(self, composition: Composition, max_principles: int) -> None:
        """400 when the server's slots cannot hold the request's streams."""
        if composition.k > max_principles:
            raise ApiError(400, f"principles: this request composes {composition.k} principles; this server "
                                f"holds {max_principles} per request (start it with --max-principles "
                                f"{composition.k})", param="principles")


def _request_names(message: str) -> str:
    """An options error message in the request's field names."""
    head, sep, rest = message.partition(" ")
    return _OPTION_TO_REQUEST.get(head, head) + sep + rest


def _grammar(response_format: ResponseFormat | None) -> str | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return JSON_GBNF
    spec = response_format.json_schema or {}
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object", param="response_format")
    # bounded before the converter and llama.cpp see it: either can be made to
    # crash or stall the server (grammar_limits.py)
    try:
        check_json_schema(schema)
    except GrammarTooLarge as e:
        raise ApiError(400, f"response_format.json_schema.schema is beyond the server's grammar limits: {e}", param="response_format") from None
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter raises assorted errors on schemas it cannot express
        raise ApiError(400, f"response_format.json_schema: unsupported schema ({e})", param="response_format") from None
    try:
        check_gbnf(grammar)
    except GrammarTooLarge as e:
        raise ApiError(400, f"response_format.json_schema.schema is beyond the server's grammar limits: {e}", param="response_format") from None
    return grammar


def _logprobs_checked(want: Callable[[], int | None]) -> int | None:
    try:
        return want()
    except (TypeError, ValueError) as e:
        raise ApiError(400, str(e), param=param_of_error(str(e)) or "logprobs") from None


class ChatCompletionRequest(_SamplingRequest):
    messages: list[dict[str, Any]]
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # OpenAI's tool calling (linalign.tool_calls checks them), and whether the
    # alignment steers a call's arguments (docs/tools.md)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    align_tool_calls: bool | None = None

    def generation_request(self, aligner: Aligner, preset: Preset | None = None) -> GenerationRequest:
        options = self.sampling_options(None, preset)
        k = _logprobs_checked(lambda: chat_top_logprobs(self.logprobs, self.top_logprobs))
        try:
            messages = validate_messages(self.messages)
        except (TypeError, ValueError) as e:
            raise ApiError(400, str(e), param="messages") from None
        composition = self.composition(options, preset)
        self.check_streams(composition, aligner.max_principles)
        try:
            request = aligner.chat_request(messages, composition=composition, options=options,
                                           logprobs=k is not None, top_logprobs=k, tools=self.tools,
                                           tool_choice=self.tool_choice, parallel_tool_calls=self.parallel_tool_calls,
                                           align_tool_calls=bool(self.align_tool_calls))
        except ToolRequestError as e:
            raise ApiError(400, str(e), param=e.param) from None
        except (TypeError, ValueError) as e:
            raise ApiError(400, str(e), param=param_of_error(str(e))) from None
        return self.per_request(request, aligner)


class CompletionRequest(_SamplingRequest):
    prompt: str | list[int] | list[str]
    base_prompt: str | list[int] | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None

    def text_offset(self) -> int:
        """Where the completion starts in the logprobs' ``text_offset``: the
        length of a text prompt (as OpenAI counts), 0 for token ids."""
        prompt = self.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        return len(prompt) if isinstance(prompt, str) else 0

    def generation_request(self, aligner: Aligner, preset: Preset | None = None) -> GenerationRequest:
        for name in ("echo", "suffix"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported by this server", param=name)
        options = self.sampling_options(16, preset)
        k = _logprobs_checked(lambda: completion_top_logprobs(self.logprobs))
        prompt: str | list[int]
        if isinstance(self.prompt, list) and self.prompt and all(isinstance(p, str) for p in self.prompt):
            if len(self.prompt) != 1:
                raise ApiError(400, "prompt: one prompt per request (a list of several is not supported)",
                               param="prompt")
            prompt = self.prompt[0]
        else:
            prompt = self.prompt  # type: ignore[assignment]
        composition = self.composition(options, preset)
        if not composition.is_plain:
            if not isinstance(prompt, str) or not isinstance(self.base_prompt, (str, type(None))):
                own = (self.principle is not None or self.principles is not None
                       or self.negative_principle is not None)
                if not own:
                    raise ApiError(400, f"model {self.model}: the preset's principle needs a text prompt (not "
                                        "token ids); ask the base model and put the principle in the prompt",
                                   param="model")
                field = ("principle" if self.principle is not None else
                         "principles" if self.principles is not None else "negative_principle")
                raise ApiError(400, f"{field} needs a text prompt (not token ids); put the principle in the "
                                    "prompt and pass base_prompt instead", param=field)
        self.check_streams(composition, aligner.max_principles)
        try:
            request = aligner.completion_request(prompt, self.base_prompt, composition=composition,
                                                 options=options, logprobs=k)
        except (TypeError, ValueError) as e:
            raise ApiError(400, str(e), param=param_of_error(str(e))) from None
        return self.per_request(request, aligner)


def parse_request(raw: bytes, model: type[_SamplingRequest]) -> Any:
    """Parses and validates a JSON body; raises :class:`ApiError` (400)."""
    try:
        # pydantic's JSON parser reads NaN and Infinity, as Python's does; the models refuse them
        body = model.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(part) for part in first["loc"]]
        where = ".".join(loc) or "body"
        raise ApiError(400, f"{where}: {first['msg']}", param=loc[0] if loc else None) from None
    refused = refusal(body.model_extra or {})
    if refused is not None:
        name, message = refused
        raise ApiError(400, message, param=name, code="unsupported_parameter")
    return body


def supported_fields() -> dict[str, list[str]]:
    """The request fields each endpoint implements, and those it accepts
    without effect (``GET /v1/models`` lists them)."""
    return {"chat": sorted(ChatCompletionRequest.model_fields), "completions": sorted(CompletionRequest.model_fields),
            "accepted_without_effect": sorted(HARMLESS_FIELDS)}
