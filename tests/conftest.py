"""Shared fixtures: the real default model, a reference llama_cpp.Llama, and
a tiny random-weight GGUF written by models/make_tiny_gguf.py."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# llama_cpp (and its libllama/libggml) before numpy: on a CUDA image whose
# numpy bundles its own OpenMP runtime, the other order crashed at model load.
import llama_cpp
import linalign

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layers to offload in the tests' model fixtures: 0 on CPU; the GPU run sets
# LINALIGN_TEST_N_GPU_LAYERS=-1 to run the same suite fully offloaded.
N_GPU_LAYERS = int(os.environ.get("LINALIGN_TEST_N_GPU_LAYERS", "0"))

CHAT_PAIRS = [
    ("Why is the sky blue?", "The user is a five-year-old child."),
    ("Give me a tip for cooking pasta.", "Always answer like a pirate."),
    ("What is a good way to learn programming?", "The user is a retired professor of mathematics."),
]


@pytest.fixture(scope="session")
def model_path() -> Path:
    return linalign.default_model_path()


@pytest.fixture(scope="session")
def aligner(model_path):
    with linalign.Aligner(model_path, n_ctx=1024, n_threads=2, seed=0, n_gpu_layers=N_GPU_LAYERS) as a:
        yield a


def open_reference_llama(model_path, n_ctx: int = 1024) -> llama_cpp.Llama:
    """A plain llama_cpp.Llama with the settings the Aligner fixture uses."""
    return linalign.load_llama(model_path, n_ctx=n_ctx, n_threads=2, n_threads_batch=2, n_gpu_layers=N_GPU_LAYERS,
                               verbose=False)


@pytest.fixture(scope="session")
def reference_llama(model_path):
    llm = open_reference_llama(model_path)
    yield llm
    llm.close()


@pytest.fixture(scope="session")
def second_llama(model_path):
    """A second, separate context: stream B of the numpy reference."""
    llm = open_reference_llama(model_path)
    yield llm
    llm.close()


def load_model_writer():
    """write_tiny_gguf from models/make_tiny_gguf.py (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("make_tiny_gguf", ROOT / "models" / "make_tiny_gguf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tiny_gguf


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return load_model_writer()(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=3)


def rss_mib() -> float:
    """This process's resident memory, MiB (Linux: reads /proc)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    """Logits of the last evaluated token of a llama_cpp.Llama (not copied to
    .scores unless logits_all)."""
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()


def assert_streams_are_separate_contexts(aligner, ref_p: llama_cpp.Llama, ref_b: llama_cpp.Llama,
                                         steps: int = 8) -> None:
    """Both streams' logits are exactly those of two separate contexts
    (``ref_p``, ``ref_b``): at the prompt, B taking a long prefix it shares
    with P from P's cells, and at every step of the batched decode."""
    shared = "A long shared introduction that both prompts start with, about rivers, mountains and the sea. " * 2
    tokens_p = aligner.tokenize(shared + "Be terse. Describe a river:")
    tokens_b = aligner.tokenize(shared + "Describe a river:")
    aligner.reset()
    engine = aligner.engine
    gen = aligner.submit(aligner.completion_request(tokens_p, tokens_b, ratio=2.0, max_tokens=steps + 1,
                                                    temperature=0.0, top_k=40, repeat_penalty=1.0))
    assert engine.last_prefill(gen.slot)["shared"] >= 32  # decoded once, in P
    ref_p.reset()
    ref_b.reset()
    ref_p.eval(tokens_p)
    ref_b.eval(tokens_b)
    for i in range(steps):
        while len(gen.tokens) <= i:  # the prompts take two steps: P's shared part first
            engine.step()
        np.testing.assert_array_equal(engine.logits(gen, 0), last_logits(ref_p))
        np.testing.assert_array_equal(engine.logits(gen, 1), last_logits(ref_b))
        ref_p.eval([gen.tokens[-1]])
        ref_b.eval([gen.tokens[-1]])
    gen.cancel()


def greedy_alone_and_together(aligner, questions, options) -> tuple[list[str], list[str]]:
    """The text of each (question, principle) chat asked alone, each from an
    empty cache, and of all of them decoded at once in one batch."""
    alone = []
    for question, principle in questions:
        aligner.reset()
        alone.append(aligner.create_chat_completion([{"role": "user", "content": question}], principle=principle,
                                                    options=options)["choices"][0]["message"]["content"])
    aligner.reset()
    gens = [aligner.submit(aligner.chat_request([{"role": "user", "content": q}], principle=p, options=options))
            for q, p in questions]
    while not all(g.done for g in gens):
        aligner.engine.step()
    return alone, ["".join(iter(g.pop_delta, None)) for g in gens]
