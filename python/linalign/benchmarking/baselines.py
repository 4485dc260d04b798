"""The benchmark's two baselines, written here on llama-cpp-python's
low-level ctypes API so that the production engine carries no code of theirs:

    floor     the raw cost of two-stream decoding: both prompts prefilled
              (their shared prefix once), then one 2-token llama_decode per
              step, no sampling at all
    two-call  aligned decoding as a straightforward port does it: one
              context, but two llama_decode calls per step (one per stream),
              sampled with the engine's own sampler chain
              (``linalign._core.SamplerChain``); ``separate_calls_generate``
              is the same for any number of streams (composed principles:
              one call per principled stream and one for the base)

Both run on a context of their own on the weights of a ``llama_cpp.Llama``
(load it with :func:`linalign.load_llama`; nothing here loads a model, so the
process keeps one libllama and one copy of the weights). The context is made
like the engine's (``cpp/engine.cpp``) for one slot: ``2 * n_ctx`` KV cells
in one unified cache (``kv_unified``; a buffer per stream on request), two
sequences (0: stream P, 1: stream B), ``n_ubatch = n_batch``, flash
attention off, ``no_perf``, the threads given.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import llama_cpp

from .. import _core
from ..options import SamplingOptions

__all__ = ["BaselineContext", "BaselineRun", "floor_generate", "separate_calls_generate", "two_call_generate"]

_SEQ_P, _SEQ_B = 0, 1
# the engine's rule (cpp/engine.cpp): with a buffer per stream a shared prefix
# is taken from P's cells only from this length on (the copy is of P's whole
# buffer); shorter ones are decoded again in B. A unified cache shares any.
_MIN_SHARED_TO_COPY = 8


class BaselineContext:
    """A llama_context and a batch on a Llama's weights, set up like the
    engine's for one slot. Close it (or use ``with``) before the Llama; it
    also closes itself when the Llama frees its model first."""

    def __init__(self, llama: llama_cpp.Llama, *, n_ctx: int, n_threads: int, n_threads_batch: int | None = None,
                 n_batch: int = 512, kv_unified: bool = True, n_seq: int = 2) -> None:
        self._ctx = None
        self._batch: llama_cpp.llama_batch | None = None
        model_ptr = getattr(getattr(llama, "_model", None), "model", None)
        if not model_ptr:
            raise RuntimeError("the llama_cpp.Llama passed in is closed")
        if n_ctx < 8 or n_batch < n_seq or n_seq < 2:
            raise ValueError(f"need n_ctx >= 8, n_seq >= 2 and n_batch >= n_seq, got {n_ctx}, {n_seq} and {n_batch}")
        self.n_seq = n_seq
        self.n_ctx = n_ctx        # the most tokens one stream holds
        self.n_batch = n_batch
        self.kv_unified = kv_unified
        self.n_vocab = llama.n_vocab()
        # the engine's sampler chain and token checks run on a borrowed
        # handle of the same weights (it frees nothing)
        self.model = _core.Model.borrow(ctypes.cast(model_ptr, ctypes.c_void_p).value)

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_seq * n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = kv_unified
        params.no_perf = True
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch or n_threads
        ctx = llama_cpp.llama_init_from_model(model_ptr, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context ({n_seq * n_ctx} KV cells; out of memory?)")
        self._ctx = ctx
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, n_seq)
        self._memory = llama_cpp.llama_get_memory(ctx)
        # the Llama's model frees its weights from its exit stack: this
        # context must go first, whichever is closed first
        llama._model._exit_stack.callback(self.close)

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Frees the batch and the context. Idempotent."""
        batch, self._batch = self._batch, None
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            llama_cpp.llama_free(ctx)
        self.model = None

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def __enter__(self) -> "BaselineContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _require_open(self):
        if self._ctx is None:
            raise RuntimeError("this baseline context is closed")
        return self._ctx

    # -- llama.cpp calls ----------------------------------------------------

    def clear(self) -> None:
        """Empties the KV cache (a cold start)."""
        self._require_open()
        llama_cpp.llama_memory_clear(self._memory, True)

    def share_prefix(self, n: int) -> None:
        """Stream B takes positions [0, n) from stream P's cells, as the
        engine does: in a unified cache the cells become B's too (nothing is
        copied); with a buffer per stream llama.cpp copies P's whole buffer
        (it can copy no less) and B is cut back to the prefix."""
        self._require_open()
        if n <= 0:
            return
        if self.kv_unified:
            llama_cpp.llama_memory_seq_cp(self._memory, _SEQ_P, _SEQ_B, 0, n)
        else:
            llama_cpp.llama_memory_seq_cp(self._memory, _SEQ_P, _SEQ_B, -1, -1)
            llama_cpp.llama_memory_seq_rm(self._memory, _SEQ_B, n, -1)

    def prefill(self, seq: int, tokens: Sequence[int], start: int = 0) -> None:
        """Decodes ``tokens[start:]`` at positions ``start...`` of ``seq``;
        only the last one's logits are kept."""
        n = len(tokens)
        self.decode_tokens([(tokens[pos], pos, seq, pos == n - 1) for pos in range(start, n)])

    def decode_tokens(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        """Decodes (token, position, sequence, wants logits) items, in their
        order (by sequence, for a cache with a buffer per stream), in calls
        of at most n_batch tokens."""
        batch = self._batch
        for first in range(0, len(items), self.n_batch):
            chunk = items[first:first + self.n_batch]
            for i, (token, pos, seq, want) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = want
            batch.n_tokens = len(chunk)
            self.decode("prefill")

    def step_batch(self, n_rows: int) -> llama_cpp.llama_batch:
        """The batch laid out for decode steps of one token per row (row i:
        sequence i, with logits); the caller writes tokens and positions
        (and, for one row, its sequence) before each :meth:`decode`."""
        batch = self._batch
        if batch is None:
            raise RuntimeError("this baseline context is closed")
        for i in range(n_rows):
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = i
            batch.logits[i] = 1
        batch.n_tokens = n_rows
        return batch

    def decode(self, what: str = "decode") -> None:
        rc = llama_cpp.llama_decode(self._require_open(), self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed in the baseline's {what} (code {rc})")

    def synchronize(self) -> None:
        """Waits for the decode calls issued so far (a GPU runs them asynchronously)."""
        llama_cpp.llama_synchronize(self._require_open())

    def logits(self, i: int) -> np.ndarray:
        """A zero-copy view of the logits of output row ``i`` of the last
        decode (-1: the last row); valid until the next decode."""
        ptr = llama_cpp.llama_get_logits_ith(self._require_open(), i)
        if not ptr:
            raise RuntimeError(f"no logits at output row {i}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))


@dataclass
class BaselineRun:
    """One baseline generation, with the times of its phases (perf_counter seconds)."""

    t_prefilled: float           # both prompts decoded (synchronized)
    t_first: float               # first token available (floor: = t_prefilled)
    t_end: float                 # last token available
    tokens: list[int]
    finish_reason: str
    text: str = ""


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _check_room(ctx: BaselineContext, prompt_p: Sequence[int], prompt_b: Sequence[int]) -> None:
    if not prompt_p or not prompt_b:
        raise ValueError("empty prompt")
    if max(len(prompt_p), len(prompt_b)) >= ctx.n_ctx:
        raise ValueError(f"prompts of {len(prompt_p)}/{len(prompt_b)} tokens leave no room in n_ctx {ctx.n_ctx}")


def floor_generate(ctx: BaselineContext, prompt_p: Sequence[int], prompt_b: Sequence[int],
                   n_tokens: int) -> BaselineRun:
    """The cost floor of ``n_tokens`` aligned tokens from a cold cache.

    Prefill, the tokens the engine's prefill decodes: where B takes the
    prefix both prompts share from P's cells (under the engine's rule), that
    prefix is decoded in P first and shared; then the rest of both prompts
    goes in one batch (calls of n_batch tokens). The first token would come
    from the prefill's logits; each of the other ``n_tokens - 1`` costs one
    2-token llama_decode (P's last prompt token fed again, positions
    advancing), and nothing is sampled. Times end on a synchronize, as every
    other method's end on a read of the logits.
    """
    _check_room(ctx, prompt_p, prompt_b)
    if len(prompt_p) + n_tokens > ctx.n_ctx or len(prompt_b) + n_tokens > ctx.n_ctx:
        raise ValueError(f"{n_tokens} tokens after the prompts overrun n_ctx {ctx.n_ctx}")
    n_p, n_b = len(prompt_p), len(prompt_b)
    shared = min(_common_prefix(prompt_p, prompt_b), n_p - 1, n_b - 1)
    if shared < (1 if ctx.kv_unified else _MIN_SHARED_TO_COPY):
        shared = 0
    ctx.clear()
    if shared:
        ctx.decode_tokens([(prompt_p[pos], pos, _SEQ_P, False) for pos in range(shared)])
        ctx.share_prefix(shared)
    ctx.decode_tokens([(prompt_p[pos], pos, _SEQ_P, pos == n_p - 1) for pos in range(shared, n_p)]
                      + [(prompt_b[pos], pos, _SEQ_B, pos == n_b - 1) for pos in range(shared, n_b)])
    ctx.synchronize()
    t_prefilled = time.perf_counter()
    token = int(prompt_p[-1])
    batch, decode = ctx.step_batch(2), ctx.decode
    batch.token[0] = batch.token[1] = token
    for i in range(n_tokens - 1):
        batch.pos[0] = n_p + i
        batch.pos[1] = n_b + i
        decode("floor step")
    ctx.synchronize()
    t_end = time.perf_counter()
    return BaselineRun(t_prefilled, t_prefilled, t_end, [token] * n_tokens, "length")


def two_call_generate(ctx: BaselineContext, prompt_p: Sequence[int], prompt_b: Sequence[int],
                      options: SamplingOptions) -> BaselineRun:
    """Aligned decoding with one llama_decode per stream per step, from a cold cache.

    The streams share nothing (no prefix taken from the other's cells):
    each prompt is prefilled in its own call(s), then every step decodes the
    sampled token into P, copies P's logits out (B's call overwrites them),
    decodes it into B, and samples from P's copy and a zero-copy view of B's
    with ``_core.SamplerChain`` (the engine's chain: linear alignment,
    penalties, top-k, min-p, temperature). Stops at an end-of-generation
    token (not counted, as in the Aligner), at ``options.max_tokens`` or
    when a stream's context is full.
    """
    return separate_calls_generate(ctx, [prompt_p, prompt_b], options)


def separate_calls_generate(ctx: BaselineContext, prompts: Sequence[Sequence[int]], options: SamplingOptions,
                            extra_ratios: Sequence[float] = ()) -> BaselineRun:
    """Composed principles decoded as a port without batching would: one
    llama_decode per stream per step, from a cold cache.

    ``prompts`` are the engine's streams in its order (P, B, then one per
    ``extra_ratios``), each in a sequence of its own of ``ctx`` (made with
    ``n_seq`` >= their number); every step decodes the sampled token into
    each stream in turn, copying each one's logits out before the next call
    overwrites them (the last stream's are read in place), and samples with
    ``_core.SamplerChain`` (the engine's chain, composing the extra
    streams). Stops at an end-of-generation token (not counted, as in the
    Aligner), at ``options.max_tokens`` or when a stream's context is full.
    """
    if len(prompts) != 2 + len(extra_ratios) or len(prompts) > ctx.n_seq:
        raise ValueError(f"{len(prompts)} prompts for {len(extra_ratios)} extra ratios on a context of "
                         f"{ctx.n_seq} sequences")
    _check_room(ctx, prompts[0], prompts[1])
    for prompt in prompts[2:]:
        _check_room(ctx, prompt, prompt)
    model, n_vocab = ctx.model, ctx.n_vocab
    params = options.to_native()
    params.extra_ratios = list(extra_ratios)
    chain = _core.SamplerChain(params, model)
    limit = options.token_limit(ctx.n_ctx)
    last = len(prompts) - 1
    copies = [np.empty(n_vocab, dtype=np.float32) for _ in range(last)]
    what = [f"decode of stream {'PB'[seq] if seq < 2 else seq}" for seq in range(len(prompts))]

    def sample(row: int) -> int:
        logits = [*copies, ctx.logits(row)]  # the last stream's: a zero-copy view
        return chain.sample(logits[0], logits[1], n_vocab, logits[2:])

    ctx.clear()
    for seq, prompt in enumerate(prompts):
        ctx.prefill(seq, prompt)
        if seq < last:
            np.copyto(copies[seq], ctx.logits(-1))
    ctx.synchronize()
    t_prefilled = time.perf_counter()
    token = sample(-1)
    t_first = time.perf_counter()
    tokens: list[int] = []
    n_past = [len(p) for p in prompts]
    batch, decode = ctx.step_batch(1), ctx.decode
    finish = "length"
    while True:
        if model.is_eog(token):
            finish = "stop"
            break
        tokens.append(token)
        if len(tokens) >= limit or max(n_past) >= ctx.n_ctx:
            break
        batch.token[0] = token
        for seq in range(len(prompts)):
            batch.pos[0] = n_past[seq]
            batch.seq_id[0][0] = seq
            decode(what[seq])
            if seq < last:
                np.copyto(copies[seq], ctx.logits(0))
            n_past[seq] += 1
        token = sample(0)
    t_end = time.perf_counter() if tokens else t_first
    text = b"".join(model.token_to_piece(t, False) for t in tokens).decode("utf-8", "replace")
    return BaselineRun(t_prefilled, t_first, t_end, tokens, finish, text)
