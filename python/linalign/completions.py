"""The OpenAI-shaped calls of the Aligner, in llama-cpp-python's shapes:
``create_completion`` and ``create_chat_completion``, a dict or a stream of
chunks (linalign.responses) over one request read from its queue.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from .principles import Composition
from .options import SamplingOptions
from .responses import ChatChunks, CompletionChunks, chunks_of, collect_chat, collect_completion
from .tokenizing import PromptType

__all__ = ["Completions"]


class Completions:
    """What :class:`~linalign.Aligner` answers with; it gives ``submit``,
    ``chunks``, ``completion_request``, ``chat_request`` and ``model_path``."""

    def create_completion(self, prompt: PromptType, base_prompt: PromptType | None = None, *,
                          principle: str | None = None, principles: Sequence[Any] | None = None,
                          negative_principle: str | None = None, composition: Composition | None = None,
                          principle_position: str | None = None,
                          stream: bool = False, options: SamplingOptions | None = None,
                          logprobs: int | None = None,
                          **sampling: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Aligned text completion.

        Parameters
        ----------
        prompt
            Stream P: the prompt with the principle in it.
        base_prompt
            Stream B: the same prompt without the principle. ``None`` means
            the same as ``prompt`` (plain decoding with a top-p nucleus).
        principle, principles, negative_principle
            Principles to put before a text prompt instead (each stream is
            ``text + "\n\n" + prompt``, the base stream the negative
            principle's, or ``base_prompt``/``prompt`` alone); as in
            :meth:`create_chat_completion`.
        stream
            Return an iterator of ``text_completion`` chunks.
        options, **sampling
            A :class:`~linalign.SamplingOptions`, and/or its fields by name
            (``ratio``, a number or ``"auto"``, ``temperature``, ``top_p``,
            ``top_k``, ``min_p``, ``repeat_penalty``, ``frequency_penalty``,
            ``presence_penalty``, ``penalty_last_n``, ``seed``,
            ``max_tokens``, ``stop``, ``grammar``, ``echo_guard``,
            ``echo_guard_n``), which override it.
        logprobs
            ``k`` in [0, 20]: each token's logprob and its ``k`` most likely
            alternatives, in OpenAI's legacy shape (``choices[0].logprobs``:
            ``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``),
            plus ``linalign``, what the alignment changed, per token (see
            :mod:`linalign.logprobs`). Not with a grammar.

        Returns
        -------
        dict or iterator of dicts
            llama-cpp-python's ``text_completion`` shape, with
            ``usage.prompt_tokens_details.cached_tokens`` and ``linalign``
            (``mean_ratio``: the mean step size applied; see
            :mod:`linalign.responses`).
        """
        gen = self.submit(self.completion_request(prompt, base_prompt, principle=principle, principles=principles,
                                                  negative_principle=negative_principle, composition=composition,
                                                  principle_position=principle_position, options=options,
                                                  logprobs=logprobs, **sampling))
        builder = CompletionChunks(str(self.model_path), logprobs=gen.request.want_logprobs,
                                   text_offset=len(prompt) if isinstance(prompt, str) else 0)
        chunks = chunks_of(builder, self.chunks(gen, whole=not stream), gen)
        return chunks if stream else collect_completion(chunks, logprobs_asked=logprobs is not None)

    def create_chat_completion(self, messages: Sequence[dict[str, Any]], *, principle: str | None = None,
                               principles: Sequence[Any] | None = None, negative_principle: str | None = None,
                               composition: Composition | None = None, principle_position: str | None = None,
                               stream: bool = False, options: SamplingOptions | None = None,
                               logprobs: bool | None = None, top_logprobs: int | None = None,
                               tools: Sequence[dict[str, Any]] | None = None, tool_choice: Any = None,
                               parallel_tool_calls: bool | None = None, align_tool_calls: bool = False,
                               **sampling: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Aligned chat completion in OpenAI's ``chat.completion`` shape.

        Stream P gets ``principle`` appended to the system message (one is
        added when there is none); stream B gets ``messages`` as given. Both
        are rendered with the model's own chat template. An empty principle
        is plain decoding.

        ``negative_principle`` goes into stream B instead of none: toward
        ``principle``, away from it (with no principle: away only).
        ``principles=[{"text": ..., "ratio": ...}, ...]`` (1 to 8; plain
        strings take ``ratio``'s default) composes several, one stream each,
        ``l = l_B + sum_i (1 + r_i) (l_i - l_B)`` inside the union of their
        nuclei, all in one batched decode per step; not together with
        ``principle`` or ``ratio``. ``principle_position="end"`` appends
        every principle to the last message before the assistant's turn instead of the system
        message, so that the streams share the whole conversation before it
        (one prefill; see docs/placement.md). ``composition`` (from
        :func:`linalign.principles.compose`) gives all of that at once. ``logprobs=True`` (with ``top_logprobs`` k in
        [0, 20] alternatives) adds OpenAI's ``choices[0].logprobs.content``,
        each entry with a ``linalign`` object (see :mod:`linalign.logprobs`).

        ``tools`` (OpenAI's ``[{"type": "function", "function": {...}}]``),
        ``tool_choice`` (``"none"``, ``"auto"``, ``"required"`` or
        ``{"type": "function", "function": {"name": ...}}``) and
        ``parallel_tool_calls``, as OpenAI takes them: a call comes back in
        ``message.tool_calls`` with ``finish_reason`` ``"tool_calls"``
        (streamed: ``delta.tool_calls``), and its result goes in as a
        ``{"role": "tool", "tool_call_id": ...}`` message. Each call's
        arguments follow its function's schema (a grammar); the alignment
        does not steer them unless ``align_tool_calls`` (docs/tools.md).
        Other parameters as in :meth:`create_completion`.
        """
        gen = self.submit(self.chat_request(messages, principle=principle, principles=principles,
                                            negative_principle=negative_principle, composition=composition,
                                            principle_position=principle_position, options=options,
                                            logprobs=logprobs, top_logprobs=top_logprobs, tools=tools,
                                            tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
                                            align_tool_calls=align_tool_calls, **sampling))
        chunks = chunks_of(ChatChunks(str(self.model_path), logprobs=gen.request.want_logprobs,
                                      tool_format=gen.request.tool_format),
                           self.chunks(gen, whole=not stream), gen)
        return chunks if stream else collect_chat(chunks, logprobs_asked=gen.request.want_logprobs is not None)
