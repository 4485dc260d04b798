"""Shared fixtures: the real default model, a reference llama_cpp.Llama, and
a tiny random-weight GGUF written by linalign.synthetic_model."""
from __future__ import annotations

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
    """write_tiny_gguf, linalign.synthetic_model's writer (also the command
    models/make_tiny_gguf.py)."""
    from linalign.synthetic_model import write_tiny_gguf

    return write_tiny_gguf


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


# -- closeness where llama.cpp's kernels depend on the batch --------------------
#
# Two decodings of the same request in other batch shapes (alone or beside
# other requests, a prompt from the cache or prefilled fresh, two streams in
# one batch or two contexts) are bit for bit equal on CPUs whose kernels
# compute a row the same way in any batch (AVX2 x86-64 here), but not where
# llama.cpp picks other kernels for other shapes (AVX-512 CPUs, CUDA). There
# they agree within rounding: the Zen 4 measured 0.065 nats between a
# 1,440-token prompt from the cache and prefilled fresh. So such tests check
# closeness (docs/exactness.md): logprobs within LOGPROB_TOL, and the same
# greedy token wherever the top-2 margin exceeds what that rounding can flip.
# A real fault (a wrong cache cell, another stream's logits) moves logprobs
# by nats, far past it.
LOGPROB_TOL = 0.25  # nats, per token, on the sampled (aligned, ratio <= 2) distribution
# The combine l_p + r (l_p - l_0) carries each stream's rounding into the
# sampled distribution up to 1 + 2r times, so the bounds here are for a step
# of at most 2: comparisons across batch shapes fix the ratio at 2 instead of
# the default "auto", whose steps reach 4 (docs/auto_ratio.md).
CLOSENESS_RATIO = 2.0
TOP_ENTRIES = 5     # alternatives the greedy comparisons ask for per token
# In the KV pool a stream's cells lie where the pool had room, and that moves
# its logits by rounding on every CPU (0.34 nats seen between a request alone
# and beside three others, on the AVX2 machine): the pool's closeness bound.
POOL_LOGPROB_TOL = 0.75


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def assert_logits_close(ours: np.ndarray, theirs: np.ndarray, tol: float = LOGPROB_TOL) -> None:
    """Two rows of logits of the same context state, computed in other batch
    shapes: the same log-probabilities within ``tol`` over the tokens that
    matter (either side's 100 most likely), and the same argmax unless the
    top two are within ``tol``."""
    a, b = log_softmax(ours), log_softmax(theirs)
    top = np.union1d(np.argsort(-a)[:100], np.argsort(-b)[:100])
    assert np.max(np.abs(a[top] - b[top])) <= tol, f"logprobs differ by {np.max(np.abs(a[top] - b[top])):.4f}"
    if int(np.argmax(a)) != int(np.argmax(b)):
        first, second = np.sort(a)[-1], np.sort(a)[-2]
        assert first - second <= 2 * tol, "the argmax differs where the top two are far apart"


def assert_same_greedy_decoding(ours: list[tuple], theirs: list[tuple], tol: float = LOGPROB_TOL) -> None:
    """Two greedy decodings of one request in other batch shapes, each a list
    of (token, logprob, {token: logprob} of its top alternatives): the same
    tokens, each logprob within ``tol``, until a token where the two runs'
    top two are within rounding of each other (a near tie either may break
    its own way); past it the texts may part."""
    for i, ((tok_a, lp_a, top_a), (tok_b, lp_b, top_b)) in enumerate(zip(ours, theirs)):
        if tok_a != tok_b:
            # each run's margin between its token and the other's: if every
            # logprob moved by at most tol, the two margins add up to <= 2 tol
            margin_a, margin_b = _margin(lp_a, top_a, tok_b), _margin(lp_b, top_b, tok_a)
            assert margin_a + margin_b <= 2 * tol, (
                f"token {i}: {tok_a!r} against {tok_b!r}, margins {margin_a:.3f} + {margin_b:.3f} > 2 x {tol}")
            return
        assert abs(lp_a - lp_b) <= tol, f"token {i} ({tok_a!r}): logprob {lp_a:.4f} against {lp_b:.4f}"
    assert len(ours) == len(theirs), "one decoding stopped where the other went on with the same tokens"


def _margin(logprob: float, top: dict, other) -> float:
    """How far ``other`` is below the chosen token in one run: its logprob
    there, else the least of a full list of TOP_ENTRIES alternatives (a lower
    bound), else infinite (the list is short: the nucleus held no more, so
    ``other`` had no probability at all)."""
    if other in top:
        return logprob - top[other]
    return logprob - min(top.values()) if len(top) >= TOP_ENTRIES else float("inf")


def entries_of_generation(gen) -> list[tuple]:
    """A finished Generation's logprob entries (it asked for logprobs), as
    assert_same_greedy_decoding takes them."""
    entries = [e for _, chunk in iter(gen.pop_chunk, None) for e in chunk] + list(gen.final_logprobs)
    return [(e.piece, e.logprob, dict(e.top)) for e in entries]


def entries_of_chat_response(response) -> list[tuple]:
    """The same from an OpenAI client's chat completion with logprobs."""
    return [(e.token, e.logprob, {t.token: t.logprob for t in e.top_logprobs})
            for e in response.choices[0].logprobs.content]


def entries_of_completion(result: dict) -> list[tuple]:
    """The same from a create_completion result (llama-cpp-python's shape)."""
    lp = result["choices"][0]["logprobs"]
    return list(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]))


def assert_streams_are_separate_contexts(aligner, ref_p: llama_cpp.Llama, ref_b: llama_cpp.Llama,
                                         steps: int = 8) -> None:
    """Both streams' logits are those of two separate contexts (``ref_p``,
    ``ref_b``), within rounding (assert_logits_close: the batches differ): at
    the prompt, B taking a long prefix it shares with P from P's cells, and
    at every step of the batched decode."""
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
        assert_logits_close(engine.logits(gen, 0), last_logits(ref_p))
        assert_logits_close(engine.logits(gen, 1), last_logits(ref_b))
        ref_p.eval([gen.tokens[-1]])
        ref_b.eval([gen.tokens[-1]])
    gen.cancel()


def greedy_alone_and_together(aligner, questions, options) -> tuple[list[list[tuple]], list[list[tuple]]]:
    """Each (question, principle) chat asked alone, each from an empty cache,
    and all of them decoded at once in one batch: the logprob entries of
    each (assert_same_greedy_decoding), TOP_ENTRIES alternatives per token."""
    def request(question: str, principle: str):
        return aligner.chat_request([{"role": "user", "content": question}], principle=principle,
                                    options=options, logprobs=True, top_logprobs=TOP_ENTRIES)
    alone = []
    for question, principle in questions:
        aligner.reset()
        gen = aligner.submit(request(question, principle))
        while not gen.done:
            aligner.engine.step()
        alone.append(entries_of_generation(gen))
    aligner.reset()
    gens = [aligner.submit(request(q, p)) for q, p in questions]
    while not all(g.done for g in gens):
        aligner.engine.step()
    return alone, [entries_of_generation(g) for g in gens]


# -- llama.cpp's RPC backend (tests/test_rpc.py, tests/test_rpc_faults.py) ----

REBUILD_WITH_RPC = 'CMAKE_ARGS="-DGGML_RPC=ON" pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python'


def require_rpc_build() -> None:
    """Skips (fails, with LINALIGN_TEST_REQUIRE_RPC=1, as CI sets) where
    llama-cpp-python is built without the RPC backend."""
    from linalign import _core

    if _core.rpc_available():
        return
    reason = f"llama-cpp-python is built without llama.cpp's RPC backend (-DGGML_RPC=ON; rebuild: {REBUILD_WITH_RPC})"
    if os.environ.get("LINALIGN_TEST_REQUIRE_RPC") == "1":
        pytest.fail(reason + ", and LINALIGN_TEST_REQUIRE_RPC=1")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Two RPC workers on loopback, one thread each (the machine has two
    cores), for the module that asks for them."""
    from linalign.benchmarking.rpc_workers import LoopbackWorker

    require_rpc_build()
    logs = tmp_path_factory.mktemp("rpc")
    pair = [LoopbackWorker(threads=1, log=logs / f"worker{i}.log").start() for i in range(2)]
    yield pair
    for w in pair:
        w.stop()
