"""The prompt cache of the Python API: a follow-up turn decodes only its new
tokens; a prefix both streams share is decoded once."""
from __future__ import annotations

import pytest

import linalign

from conftest import N_GPU_LAYERS

PRINCIPLE = "Always answer like a pirate."


def prefill_of(aligner, call):
    """Runs ``call`` (an Aligner request) to the end; what its slot found cached."""
    gen = aligner.submit(call)
    stats = aligner.engine.last_prefill(gen.slot)
    "".join(aligner.deltas(gen))
    return gen, stats


def test_second_turn_decodes_only_new_tokens(aligner):
    """Each stream keeps its own cache (the principle in the system message;
    at the end, the default, the streams share the new turn:
    test_placement.py)."""
    aligner.reset()
    history = [{"role": "user", "content": "Hi! Who are you?"}]
    first, first_prefill = prefill_of(aligner, aligner.chat_request(history, principle=PRINCIPLE, max_tokens=16,
                                                                    temperature=0.0, principle_position="system"))
    assert not any(first_prefill["reused"])  # the session Aligner may have grown a third stream
    assert first.usage()["prompt_tokens_details"]["cached_tokens"] == 0

    answer = aligner.detokenize(first.tokens)
    history += [{"role": "assistant", "content": answer}, {"role": "user", "content": "What do you eat?"}]
    second, stats = prefill_of(aligner, aligner.chat_request(history, principle=PRINCIPLE, max_tokens=8,
                                                             temperature=0.0, principle_position="system"))
    text_p, text_b = aligner.render_chat(history, PRINCIPLE, principle_position="system")
    n_p, n_b = len(aligner.tokenize(text_p, add_bos=False)), len(aligner.tokenize(text_b, add_bos=False))
    assert stats["reused"][0] + stats["decoded"][0] == n_p
    assert stats["reused"][1] + stats["decoded"][1] + stats["shared"] == n_b
    for stream in (0, 1):
        assert stats["reused"][stream] >= first.prompt_tokens // 2  # the first prompt was kept
    assert stats["decoded"][0] < n_p / 2
    assert second.usage()["prompt_tokens_details"]["cached_tokens"] == stats["reused"][0] > 0


def test_chat_usage_reports_cached_tokens_from_the_second_turn(aligner):
    aligner.reset()
    history = [{"role": "user", "content": "Name a colour."}]
    first = aligner.create_chat_completion(history, principle=PRINCIPLE, max_tokens=8, temperature=0.0)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    history += [first["choices"][0]["message"], {"role": "user", "content": "And another?"}]
    second = aligner.create_chat_completion(history, principle=PRINCIPLE, max_tokens=8, temperature=0.0)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > first["usage"]["prompt_tokens"] // 2


def test_long_shared_prefix_is_decoded_once(aligner):
    document = "Notes on the water cycle: evaporation, condensation, precipitation and collection. " * 3
    prompt, base = document + "Principle: be brief. Question?", document + "Question?"
    aligner.reset()
    _, stats = prefill_of(aligner, aligner.completion_request(prompt, base, max_tokens=1))
    n_p, n_b = len(aligner.tokenize(prompt)), len(aligner.tokenize(base))
    assert stats["shared"] >= 32  # the document: decoded in P, B takes P's cells
    assert stats["decoded"][0] == n_p and stats["decoded"][1] == n_b - stats["shared"]
    assert not any(stats["reused"])

    # a new question on the same document: each stream keeps its own cache
    _, stats = prefill_of(aligner, aligner.completion_request(prompt, base, max_tokens=1))
    assert stats["shared"] == 0
    assert stats["reused"][:2] == (n_p - 1, n_b - 1)


@pytest.fixture(scope="module")
def per_stream(model_path):
    with linalign.Aligner(model_path, n_ctx=256, n_threads=2, kv_unified=False, n_gpu_layers=N_GPU_LAYERS) as a:
        yield a


def test_short_shared_prefix_is_decoded_in_the_one_batch(per_stream):
    """With a KV buffer per stream, where taking a prefix copies a buffer."""
    aligner = per_stream
    aligner.reset()
    calls = aligner.engine.n_decode_calls
    _, stats = prefill_of(aligner, aligner.completion_request("Common start. Principle: be brief. Question?",
                                                              "Common start. Question?", max_tokens=1))
    assert stats["shared"] == 0  # a copy of a stream's buffer costs more than these few tokens
    assert aligner.engine.n_decode_calls - calls == 1  # both prompts in one llama_decode


def test_in_the_pool_any_shared_prefix_is_taken_from_the_other_streams_cells(aligner):
    """In the pool taking a prefix copies nothing: B takes even a few
    tokens from P's cells (one step for P's shared part, one for the rest)."""
    aligner.reset()
    _, stats = prefill_of(aligner, aligner.completion_request("Common start. Principle: be brief. Question?",
                                                              "Common start. Question?", max_tokens=1))
    assert 0 < stats["shared"] < 8


def test_identical_prompts_repeat_reuses_everything_but_last(aligner):
    aligner.create_completion("The same prompt again", None, max_tokens=2, temperature=0.0)
    _, stats = prefill_of(aligner, aligner.completion_request("The same prompt again", None, max_tokens=2,
                                                              temperature=0.0))
    assert stats["decoded"][0] == 1
