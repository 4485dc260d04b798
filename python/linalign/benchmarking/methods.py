"""The five ways of decoding the workload that the benchmark compares.

Each method's ``run`` does one greedy generation from a cold KV cache and
returns its timings. The clock is the same for all of them:

* time to first token (TTFT): from the call to the first streamed chunk
  (two-call: to its first sampled token; floor, which samples nothing: to
  the end of its prefill);
* decode: from the first token to the end of the stream, over the
  ``n_generated - 1`` tokens produced in it (each one forward pass and one
  sampling step), so prefill is excluded.

    plain     llama-cpp-python, principled prompt only, no alignment
    floor     raw 2-token llama_decode per step, no sampling (baselines.py)
    linalign  Aligner.create_completion (one batched 2-token decode per step)
    two-call  two llama_decode calls per step on one context, the engine's
              sampler chain (baselines.py)
    naive     a second llama_cpp.Llama for stream B driven from a
              logits_processor on the first, combined in numpy
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import llama_cpp

from ..engine import run_on_engine_thread
from ..options import SamplingOptions
from .baselines import BaselineContext, floor_generate, two_call_generate
from .workload import RATIO, SEED, TOP_P, Workload

__all__ = ["RunSample", "PlainMethod", "FloorMethod", "TwoCallMethod", "AlignerMethod", "NaiveMethod",
           "NaiveLinearAlignment", "METHOD_NAMES"]

METHOD_NAMES = ("plain", "floor", "linalign", "naive", "two-call")


@dataclass
class RunSample:
    ttft_s: float          # call -> first token available
    decode_s: float        # first token -> last token
    n_generated: int       # tokens generated (decode steps = n_generated - 1)
    prompt_tokens: int     # prompt tokens this method had to process
    prefill_s: float | None = None  # the prefill alone, where it can be separated
    finish_reason: str | None = None
    text: str = ""

    @property
    def decode_tps(self) -> float:
        return (self.n_generated - 1) / self.decode_s if self.decode_s > 0 and self.n_generated > 1 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decode_tps"] = self.decode_tps
        return d


def _completion_timing(chunks, t0: float) -> tuple[float, float, Any, str]:
    """Consumes a stream of completion chunks: (ttft, decode time, last chunk, text)."""
    first = None
    last = None
    texts = []
    for chunk in chunks:
        if first is None:
            first = time.perf_counter()
        texts.append(chunk["choices"][0]["text"])
        last = chunk
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("the completion stream produced no chunk")
    return first - t0, end - first, last, "".join(texts)


class PlainMethod:
    """llama-cpp-python on the principled prompt alone: what not aligning costs."""

    name = "plain"

    def __init__(self, llama: llama_cpp.Llama, workload: Workload) -> None:
        self.llama = llama
        self.workload = workload

    def run(self, max_tokens: int) -> RunSample:
        llm, tp = self.llama, self.workload.prompt_p
        llm.reset()  # a cold cache: no prefix reuse between repetitions
        t0 = time.perf_counter()
        chunks = llm.create_completion(tp, max_tokens=max_tokens, temperature=0.0, top_p=1.0, repeat_penalty=1.0,
                                       seed=SEED, stream=True)
        ttft, decode, last, text = _completion_timing(chunks, t0)
        finish = last["choices"][0]["finish_reason"]
        # the last sampled token is evaluated only when generation goes on
        n_generated = llm.n_tokens - len(tp) + (1 if finish == "length" else 0)
        return RunSample(ttft, decode, n_generated, len(tp), finish_reason=finish, text=text)


class FloorMethod:
    """Raw two-sequence decoding (:func:`~.baselines.floor_generate`): prefill
    of both prompts (the shared prefix once), then one 2-token llama_decode
    per step, no sampling. Its TTFT is that prefill."""

    name = "floor"

    def __init__(self, context: BaselineContext, workload: Workload) -> None:
        self.context = context
        self.workload = workload

    def run(self, max_tokens: int) -> RunSample:
        w = self.workload
        t0 = time.perf_counter()
        run = floor_generate(self.context, w.prompt_p, w.prompt_b, max_tokens)
        prefill = run.t_prefilled - t0
        return RunSample(prefill, run.t_end - run.t_prefilled, len(run.tokens), w.n_prompt_tokens, prefill_s=prefill,
                         finish_reason=run.finish_reason)


class TwoCallMethod:
    """Aligned decoding with two llama_decode calls per step, one per stream,
    on one context (:func:`~.baselines.two_call_generate`), sampled by the
    engine's own sampler chain."""

    name = "two-call"

    def __init__(self, context: BaselineContext, workload: Workload) -> None:
        self.context = context
        self.workload = workload

    def run(self, max_tokens: int) -> RunSample:
        w = self.workload
        options = SamplingOptions(ratio=RATIO, max_tokens=max_tokens, temperature=0.0, top_p=TOP_P, seed=SEED)
        t0 = time.perf_counter()
        run = two_call_generate(self.context, w.prompt_p, w.prompt_b, options)
        return RunSample(run.t_first - t0, run.t_end - run.t_first, len(run.tokens), w.n_prompt_tokens,
                         prefill_s=run.t_prefilled - t0, finish_reason=run.finish_reason, text=run.text)


class AlignerMethod:
    """Aligner.create_completion, streamed, from a cold prompt cache."""

    def __init__(self, name: str, aligner, workload: Workload) -> None:
        self.name = name
        self.aligner = aligner
        self.workload = workload

    def run(self, max_tokens: int) -> RunSample:
        a, w = self.aligner, self.workload
        a.reset()
        t0 = time.perf_counter()
        # the stream prefills both prompts at its first next(): the first
        # chunk comes after the prefill and the first sample
        chunks = a.create_completion(w.prompt_p, w.prompt_b, ratio=RATIO, max_tokens=max_tokens, temperature=0.0,
                                     top_p=TOP_P, seed=SEED, stream=True)
        ttft, decode, last, text = _completion_timing(chunks, t0)
        return RunSample(ttft, decode, last["usage"]["completion_tokens"], w.n_prompt_tokens, prefill_s=ttft,
                         finish_reason=last["choices"][0]["finish_reason"], text=text)


class NaiveLinearAlignment:
    """A llama-cpp-python logits processor doing linear alignment the way a
    user writes it today: a second Llama holds stream B; every call feeds it
    the new token(s), reads its logits and combines in numpy."""

    def __init__(self, llama_b: llama_cpp.Llama, prompt_b: list[int], *, ratio: float, top_p: float) -> None:
        self.llama_b = llama_b
        self.prompt_b = list(prompt_b)
        self.ratio = ratio
        self.top_p = top_p
        self.n_seen = -1  # tokens of stream P already mirrored into stream B
        self.n_vocab = llama_b.n_vocab()

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        llm_b = self.llama_b
        if self.n_seen < 0:
            llm_b.reset()
            llm_b.eval(self.prompt_b)
        else:
            llm_b.eval([int(t) for t in input_ids[self.n_seen:]])
        self.n_seen = len(input_ids)
        # with logits_all=False llama-cpp-python does not copy logits to .scores
        l0 = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm_b.ctx, -1), shape=(self.n_vocab,))
        lp = np.asarray(scores, dtype=np.float32)
        order = np.argsort(-lp)
        sorted_lp = lp[order]
        probs = np.exp(sorted_lp - sorted_lp[0])
        probs /= probs.sum()
        mass_before = np.cumsum(probs) - probs
        keep = order[mass_before < self.top_p]
        out = np.full_like(lp, -np.inf)
        out[keep] = lp[keep] + self.ratio * (lp[keep] - l0[keep])
        return out


class NaiveMethod:
    name = "naive"

    def __init__(self, llama_p: llama_cpp.Llama, llama_b: llama_cpp.Llama, workload: Workload) -> None:
        self.llama_p = llama_p
        self.llama_b = llama_b
        self.workload = workload

    def run(self, max_tokens: int) -> RunSample:
        llm, w = self.llama_p, self.workload
        processor = NaiveLinearAlignment(self.llama_b, w.prompt_b, ratio=RATIO, top_p=TOP_P)
        llm.reset()
        t0 = time.perf_counter()
        chunks = llm.create_completion(w.prompt_p, max_tokens=max_tokens, temperature=0.0, top_p=1.0,
                                       repeat_penalty=1.0, seed=SEED, stream=True,
                                       logits_processor=llama_cpp.LogitsProcessorList([processor]))
        ttft, decode, last, text = _completion_timing(chunks, t0)
        finish = last["choices"][0]["finish_reason"]
        n_generated = llm.n_tokens - len(w.prompt_p) + (1 if finish == "length" else 0)
        return RunSample(ttft, decode, n_generated, w.n_prompt_tokens, finish_reason=finish, text=text)


def run_method(method: Any, max_tokens: int) -> RunSample:
    """One run of ``method``. A baseline decodes on the engine thread, where
    linalign's own requests decode: a process keeps one OpenMP team that
    way, and a baseline decoding on the caller's thread would slow both
    sides (linalign/engine/loop.py). An Aligner's run reads its stream here."""
    if isinstance(method, AlignerMethod):
        return method.run(max_tokens)
    return run_on_engine_thread(lambda: method.run(max_tokens))
