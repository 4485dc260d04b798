"""Requests from what a caller asks: the token streams of a completion or a
chat call (P, B and any further principled streams, rendered with the
model's chat template), its sampling options, logprobs and tool calls, as a
:class:`~linalign.engine.GenerationRequest` for the engine.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from .chat import ChatRenderer, validate_messages
from .engine import GenerationRequest
from .logprobs import chat_top_logprobs, completion_top_logprobs
from .options import SamplingOptions
from .principles import DEFAULT_POSITION, Composition, compose
from .tokenizing import PromptType, Tokenizer
from .tool_calls import plan_tool_calls

__all__ = ["RequestBuilding"]


class RequestBuilding:
    """How :class:`~linalign.Aligner` builds requests. It gives ``_tokens``
    (a Tokenizer), ``_renderer`` (a ChatRenderer), ``_chat_template``,
    ``_room_for(n_streams)`` (makes sure the engine can hold a request of
    that many streams, or raises ValueError) and ``_require_open()``."""

    _tokens: Tokenizer
    _renderer: ChatRenderer
    _chat_template: str | None
    _room_for: Callable[[int], None]
    _require_open: Callable[[], Any]

    def completion_request(self, prompt: PromptType, base_prompt: PromptType | None = None, *,
                           principle: str | None = None, principles: Sequence[Any] | None = None,
                           negative_principle: str | None = None, composition: Composition | None = None,
                           principle_position: str | None = None, options: SamplingOptions | None = None,
                           logprobs: int | None = None, **sampling: Any) -> GenerationRequest:
        """The token streams of a completion (see :meth:`create_completion`)."""
        self._require_open()
        want = completion_top_logprobs(logprobs)
        options = SamplingOptions.from_kwargs(options, **sampling)
        composition = self._composition(composition, principle, principles, negative_principle,
                                        principle_position, options, "ratio" in sampling)
        if composition.position == "end":
            raise ValueError("principle_position: completions put each principle before the prompt; "
                             "'end' applies to chat")
        if composition.is_plain:
            prompt_tokens = self._tokens.prompt_tokens("prompt", prompt)
            base_tokens = prompt_tokens if base_prompt is None else self._tokens.prompt_tokens("base_prompt", base_prompt)
            return GenerationRequest(prompt_tokens, base_tokens, options, options.stop, want_logprobs=want)
        for name, text in (("prompt", prompt), ("base_prompt", base_prompt)):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"{name} must be text when principles are given (each stream is the principle, "
                                "a blank line, then the prompt)")
        base = prompt if base_prompt is None else base_prompt
        principled = [self._tokens.prompt_tokens("prompt", _prefixed(text, prompt)) for text in composition.stream_texts]
        base_tokens = self._tokens.prompt_tokens("base_prompt", _prefixed(composition.negative, base))
        return self._composed_request(principled, base_tokens, composition, options, options.stop, want)

    def chat_request(self, messages: Sequence[dict[str, Any]], *, principle: str | None = None,
                     principles: Sequence[Any] | None = None, negative_principle: str | None = None,
                     composition: Composition | None = None, principle_position: str | None = None,
                     options: SamplingOptions | None = None, logprobs: bool | None = None,
                     top_logprobs: int | None = None, tools: Sequence[dict[str, Any]] | None = None,
                     tool_choice: Any = None, parallel_tool_calls: bool | None = None,
                     align_tool_calls: bool = False, **sampling: Any) -> GenerationRequest:
        """The token streams of a chat call (see :meth:`create_chat_completion`)."""
        self._require_open()
        want = chat_top_logprobs(logprobs, top_logprobs)
        options = SamplingOptions.from_kwargs(options, **sampling)
        composition = self._composition(composition, principle, principles, negative_principle,
                                        principle_position, options, "ratio" in sampling)
        if not isinstance(align_tool_calls, bool):
            raise TypeError("align_tool_calls must be true or false")
        plan = plan_tool_calls(self._chat_template, validate_messages(messages), tools, tool_choice,
                               parallel_tool_calls)
        template_tools, tool_format = None, None
        if plan is not None:
            messages, template_tools = plan.messages, plan.template_tools
            options = plan.sampling(options, align_tool_calls=align_tool_calls)
            tool_format = plan.format if plan.parses_calls else None
        texts, base_text = composition.stream_texts, composition.negative
        if not any(self._tokens.has_control_text(t) for t in (*texts, base_text)):
            streams = self._renderer.stream_prompts(messages, texts, base_text, composition.chat_position,
                                                    template_tools)
            principled = [self._tokens.prompt_tokens("messages", p, add_bos=streams.add_bos) for p in streams.prompts]
            base_tokens = self._tokens.prompt_tokens("messages", streams.base_prompt, add_bos=streams.add_bos)
        else:
            # A principle that spells a control token ("<|im_end|>") is text:
            # rendered as a placeholder, tokenized apart without special tokens.
            mark = f"\ue000{os.urandom(8).hex()}\ue001"
            streams = self._renderer.stream_prompts(messages, [mark if t else "" for t in texts],
                                                    mark if base_text else "", composition.chat_position,
                                                    template_tools)
            principled = [self._tokens.literal_tokens(p, mark, t, streams.add_bos) for p, t in zip(streams.prompts, texts)]
            base_tokens = self._tokens.literal_tokens(streams.base_prompt, mark, base_text, streams.add_bos)
        request = self._composed_request(principled, base_tokens, composition, options,
                                         options.stop + tuple(streams.stop), want)
        return dataclasses.replace(request, tool_format=tool_format) if tool_format else request

    @staticmethod
    def _composition(composition: Composition | None, principle: Any, principles: Any, negative_principle: Any,
                     principle_position: Any, options: SamplingOptions, ratio_given: bool) -> Composition:
        """The request's principles: ``composition`` as given (made by
        linalign.principles.compose), or composed from the keywords."""
        if composition is None:
            return compose(principle=principle, principles=principles, negative_principle=negative_principle,
                           ratio=options.ratio, ratio_given=ratio_given, principle_position=principle_position)
        if not isinstance(composition, Composition):
            raise TypeError("composition must be a linalign.principles.Composition")
        if any(x is not None for x in (principle, principles, negative_principle, principle_position)):
            raise ValueError("composition and principle/principles/negative_principle/principle_position: "
                             "give one or the other")
        return composition

    def _composed_request(self, principled: list[list[int]], base_tokens: list[int], composition: Composition,
                          options: SamplingOptions, stop: tuple[str, ...], want: int | None) -> GenerationRequest:
        ratios = composition.ratios
        self._room_for(1 + len(principled))  # the context grows when it can (context_growth.py)
        # the echo guard watches each principle as plain text, no BOS (as in the prompt, after a line break)
        guarded = tuple(self._tokens.tokenize(t, add_bos=False, special=False) if t else [] for t in composition.stream_texts)
        return GenerationRequest(principled[0], base_tokens, options.replace(ratio=ratios[0]), stop,
                                 want_logprobs=want, extra_prompts=tuple(principled[1:]),
                                 extra_ratios=tuple(ratios[1:]), principle_tokens=guarded)

    def render_chat(self, messages: Sequence[dict[str, Any]], principle: str = "",
                    principle_position: str = DEFAULT_POSITION) -> tuple[str, str]:
        """The (P, B) prompt texts a chat call would decode."""
        streams = self._renderer.stream_prompts(messages, [principle], "", principle_position)
        return streams.prompts[0], streams.base_prompt

    def chat_tokens(self, messages: Sequence[dict[str, Any]], principle: str = "", *,
                    assistant_prefix: str = "", principle_position: str = DEFAULT_POSITION) -> tuple[list[int], list[int]]:
        """The (P, B) token lists a chat call would decode, with optional text
        after the generation prompt (e.g. "The best answer is")."""
        self._require_open()
        compose(principle=principle, principle_position=principle_position)  # checks the position
        streams = self._renderer.stream_prompts(messages, [principle], "", principle_position)
        prompt, base = streams.prompts[0], streams.base_prompt
        return (self._tokens.prompt_tokens("messages", prompt + assistant_prefix, add_bos=streams.add_bos),
                self._tokens.prompt_tokens("messages", base + assistant_prefix, add_bos=streams.add_bos))


def _prefixed(principle: str, prompt: Any) -> Any:
    """A completion stream's text: the principle, a blank line, the prompt."""
    return f"{principle}\n\n{prompt}" if principle else prompt
