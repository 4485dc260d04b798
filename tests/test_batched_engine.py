"""The batched engine: many requests in one context, one llama_decode per
step across every slot, a slot per request chosen by its cached prefix, and
requests that join, leave and are cancelled between steps."""
from __future__ import annotations

import pytest

import linalign
from linalign import GenerationRequest, SamplingOptions

from conftest import (CHAT_PAIRS, CLOSENESS_RATIO, N_GPU_LAYERS, TOP_ENTRIES, assert_same_greedy_decoding,
                      entries_of_completion, greedy_alone_and_together)

GREEDY = SamplingOptions(ratio=CLOSENESS_RATIO, temperature=0.0, max_tokens=32)
QUESTIONS = CHAT_PAIRS + [("Tell me about cats.", "Answer in one short sentence.")]


@pytest.fixture(scope="module")
def pool(model_path):
    # a KV buffer per stream: the slot placement, forward-pass counts and
    # prefix reuse these tests check are those of per-stream buffers (the
    # pool's own are in test_kv_pool.py)
    with linalign.Aligner(model_path, n_ctx=512, n_parallel=4, n_batch=256, n_threads=2, kv_unified=False,
                          count_passes=True, n_gpu_layers=N_GPU_LAYERS) as a:
        yield a


def chat(aligner, question: str, principle: str, options: SamplingOptions = GREEDY) -> GenerationRequest:
    return aligner.chat_request([{"role": "user", "content": question}], principle=principle, options=options)


def run_all(aligner, gens) -> int:
    """Steps the engine until every request is done; returns the steps taken."""
    steps = 0
    while not all(g.done for g in gens):
        aligner.engine.step()
        steps += 1
    return steps


def test_four_concurrent_greedy_requests_match_each_alone(pool):
    """Decoded beside three others, a request gets what it gets alone, within
    rounding: the batch differs, and on CPUs whose kernels depend on it
    (AVX-512, CUDA) so do the last bits (conftest.LOGPROB_TOL)."""
    alone, together = greedy_alone_and_together(pool, QUESTIONS, GREEDY)
    for each_alone, each_together in zip(alone, together):
        assert each_alone
        assert_same_greedy_decoding(each_together, each_alone)


def test_one_llama_decode_per_step_across_all_slots(pool):
    pool.reset()
    before = pool.engine.n_decode_calls
    gens = [pool.submit(chat(pool, q, p)) for q, p in QUESTIONS]
    assert pool.engine.n_free == 0
    steps = run_all(pool, gens)
    assert pool.engine.n_decode_calls - before == steps
    # the four requests together took no more steps than the longest of them
    assert steps <= max(g.completion_tokens for g in gens) + 2


def test_a_decode_step_of_every_slot_is_one_forward_pass(pool):
    """llama.cpp runs a step's batch as one ubatch (one forward pass) when the
    running streams' sequence ids are consecutive: every slot busy here."""
    pool.reset()
    engine = pool.engine
    gens = [pool.submit(chat(pool, q, p)) for q, p in QUESTIONS]
    while not all(g.tokens for g in gens):  # the prompts (a prompt beside decodes adds passes)
        engine.step()
    counted = 0
    while not any(g.done for g in gens):
        before = engine.n_forward_passes
        engine.step()
        if not any(g.done for g in gens):
            assert engine.n_forward_passes - before == 1
            counted += 1
    assert counted >= 4
    run_all(pool, gens)


def test_a_new_request_takes_the_free_slot_with_the_longest_cached_prefix(pool):
    pool.reset()
    first = [pool.submit(chat(pool, q, p, GREEDY.replace(max_tokens=2))) for q, p in QUESTIONS]
    run_all(pool, first)
    slots = [g for g in first]
    for gen, (question, principle) in zip(reversed(slots), reversed(QUESTIONS)):
        again = pool.submit(chat(pool, question, principle, GREEDY.replace(max_tokens=1)))
        assert again.cached_tokens == again.prompt_tokens - 1  # everything but the last prompt token
        run_all(pool, [again])


def _tokens(first: int, n: int) -> list[int]:
    return list(range(first, first + n))


def _place_far_from_a_busy_slot(pool, shared: int):
    """Fills every slot with a prompt of its own, then starts X (sharing
    nothing with any cache) and Y, which shares ``shared`` tokens per stream
    with the cache of a slot two or more away from X's. Returns (X's slot,
    that far slot, Y's slot)."""
    pool.reset()
    caches = [pool.submit(pool.completion_request(_tokens(2000 + 400 * j, 160), _tokens(2200 + 400 * j, 160),
                                                  ratio=2.0, max_tokens=1, temperature=0.0))
              for j in range(4)]
    by_slot = {g.slot: j for j, g in enumerate(caches)}
    run_all(pool, caches)
    x = pool.submit(pool.completion_request(_tokens(9000, 40), _tokens(9100, 40), ratio=2.0, max_tokens=8,
                                            temperature=0.0))
    far = next(s for s in (3, 0, 2, 1) if abs(s - x.slot) >= 2)
    j = by_slot[far]
    y = pool.submit(pool.completion_request(_tokens(2000 + 400 * j, shared) + _tokens(9300, 20),
                                            _tokens(2200 + 400 * j, shared) + _tokens(9400, 20),
                                            ratio=2.0, max_tokens=2, temperature=0.0))
    slots = (x.slot, far, y.slot)
    while not y.tokens:
        pool.engine.step()
    before, steps = pool.engine.n_forward_passes, pool.engine.n_decode_calls
    pool.engine.step()  # X and Y decode: one pass when their slots are neighbours, two when not
    passes = pool.engine.n_forward_passes - before
    assert pool.engine.n_decode_calls - steps == 1
    run_all(pool, [x, y])
    return slots + (passes,)


def test_a_request_with_little_to_reuse_joins_next_to_the_busy_slots(pool):
    # a far slot sharing 3 tokens per stream is not worth widening every
    # step's range of streams (SPAN_COST_TOKENS in cpp/engine.h)
    x, far, y, passes = _place_far_from_a_busy_slot(pool, shared=3)
    assert abs(y - x) == 1 and y != far
    assert passes == 1


def test_a_long_cached_prefix_is_worth_a_slot_away_from_the_busy_ones(pool):
    x, far, y, passes = _place_far_from_a_busy_slot(pool, shared=150)
    assert y == far
    assert passes == 2  # the price of the gap, paid to reuse 150 tokens a stream


def test_a_changed_system_message_reuses_only_the_tokens_before_the_change(pool):
    pool.reset()
    long_system = "You are a helpful assistant who knows a great deal about the sea and its creatures. "
    messages = [{"role": "system", "content": long_system + "Be brief."}, {"role": "user", "content": "Hi"}]
    run_all(pool, [pool.submit(pool.chat_request(messages, principle="Be kind.", options=GREEDY.replace(max_tokens=1)))])
    changed = [{"role": "system", "content": long_system + "Be verbose."}, messages[1]]
    gen = pool.submit(pool.chat_request(changed, principle="Be kind.", options=GREEDY.replace(max_tokens=1)))
    prompt = list(gen.request.prompt)
    earlier = pool.tokenize(pool.render_chat(messages, "Be kind.")[0], add_bos=False)
    common = next(i for i, (a, b) in enumerate(zip(prompt, earlier)) if a != b)
    assert 0 < gen.cached_tokens == common < gen.prompt_tokens - 1  # compared as tokens, up to the change
    run_all(pool, [gen])


def test_without_cache_prompt_every_request_prefills_from_scratch(model_path):
    with linalign.Aligner(model_path, n_ctx=256, cache_prompt=False, n_threads=2, n_gpu_layers=N_GPU_LAYERS) as a:
        messages = [{"role": "user", "content": "Name a colour."}]
        a.create_chat_completion(messages, principle="Be brief.", options=GREEDY.replace(max_tokens=2))
        again = a.create_chat_completion(messages, principle="Be brief.", options=GREEDY.replace(max_tokens=2))
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_a_cancelled_request_frees_its_slot_at_the_next_step(pool):
    pool.reset()
    gens = [pool.submit(chat(pool, q, p, GREEDY.replace(max_tokens=200))) for q, p in QUESTIONS]
    pool.engine.step()
    gens[1].cancel()
    pool.engine.step()
    assert gens[1].done and gens[1].finish_reason == "cancelled"
    assert pool.engine.n_free == 1
    late = pool.submit(chat(pool, "Say hello.", "", GREEDY.replace(max_tokens=4)))
    assert late is not None
    for g in gens:
        g.cancel()
    run_all(pool, [late] + gens)
    assert late.finish_reason in ("stop", "length")


def test_a_request_cancelled_mid_prefill_leaves_a_consistent_cache(model_path):
    with linalign.Aligner(model_path, n_ctx=1024, n_batch=32, n_threads=2, n_gpu_layers=N_GPU_LAYERS) as a:
        document = "The quick brown fox jumps over the lazy dog. " * 20
        gen = a.submit(a.completion_request(document + "Summary:", options=GREEDY.replace(max_tokens=4)))
        a.engine.step()  # 32 of its ~200 prompt tokens
        gen.cancel()
        a.engine.step()
        assert gen.finish_reason == "cancelled"
        after = a.create_completion(document + "Summary:", options=GREEDY.replace(max_tokens=4),
                                    logprobs=TOP_ENTRIES)
        a.reset()
        fresh = a.create_completion(document + "Summary:", options=GREEDY.replace(max_tokens=4),
                                    logprobs=TOP_ENTRIES)
        assert after["usage"]["prompt_tokens_details"]["cached_tokens"] == 32
        # the 32 cached tokens were a batch of their own: equal within rounding
        assert_same_greedy_decoding(entries_of_completion(after), entries_of_completion(fresh))


def test_running_streams_get_a_token_every_step_while_a_long_prompt_is_ingested(model_path):
    with linalign.Aligner(model_path, n_ctx=1024, n_parallel=2, n_batch=64, n_threads=2,
                          n_gpu_layers=N_GPU_LAYERS) as a:
        running = a.submit(a.completion_request("Count: 1, 2, 3,", options=GREEDY.replace(max_tokens=60)))
        a.engine.step()
        assert running.completion_tokens == 1
        long_prompt = "A very long document about rivers and lakes. " * 30  # ~300 tokens: five 64-token steps
        joining = a.submit(a.completion_request(long_prompt, "Plain: " + long_prompt,
                                                options=GREEDY.replace(max_tokens=2)))
        for step in range(2, 8):
            a.engine.step()
            assert running.completion_tokens == step
        assert joining.completion_tokens == 0  # still prefilling, in chunks
        run_all(a, [running, joining])
        assert joining.finish_reason == "length"


def test_superseding_the_oldest_stream_when_every_slot_is_busy(model_path):
    with linalign.Aligner(model_path, n_ctx=256, n_threads=2, n_gpu_layers=N_GPU_LAYERS) as a:
        old = a.create_completion("Once upon a time", stream=True, options=GREEDY)
        next(old)
        new = a.create_completion("The capital of France is", options=GREEDY.replace(max_tokens=3))
        assert new["usage"]["completion_tokens"] == 3
        with pytest.raises(linalign.GenerationSuperseded):
            list(old)


def test_bad_grammar_is_a_value_error_at_the_call(pool):
    with pytest.raises(ValueError, match="grammar"):
        pool.create_completion("Hello", grammar="root ::= (")
    assert pool.engine.n_busy == 0


def test_submit_into_a_given_slot_takes_only_a_free_one(pool):
    pool.reset()
    first = pool.engine.submit(chat(pool, "Hi", "Be kind.", GREEDY.replace(max_tokens=2)), slot=2)
    assert first.slot == 2
    with pytest.raises(ValueError, match="slot 2 is not a free slot"):
        pool.engine.submit(chat(pool, "Hi", "Be kind."), slot=2)
    with pytest.raises(ValueError, match="slot 4 is not a free slot"):
        pool.engine.submit(chat(pool, "Hi", "Be kind."), slot=4)
    run_all(pool, [first])


def test_slots_sampled_at_once_are_each_their_own(pool):
    """The slots of a step sample at once (engine.cpp, sample_all: on the
    decode's OpenMP team), each with its own chain, seed and logprob scratch.
    Two runs of the same four seeded, sampled requests with logprobs, each
    from an empty cache (the same batches: exact by construction), give the
    same tokens and the same entries; a slot reading another's scratch would
    not, and the sanitizer run (.ci/sanitize) sees the same code."""
    import dataclasses

    def run() -> list[tuple[list[int], list]]:
        pool.reset()
        gens = []
        for i, (q, p) in enumerate(QUESTIONS):
            options = SamplingOptions(temperature=0.9, top_p=0.95, seed=100 + i, max_tokens=24)
            gens.append(pool.submit(dataclasses.replace(chat(pool, q, p, options), want_logprobs=3)))
        run_all(pool, gens)
        runs = []
        for g in gens:
            entries = []  # TokenLogprob: dataclasses, compared whole
            while (chunk := g.pop_chunk()) is not None:
                entries += chunk[1]
            runs.append((list(g.tokens), entries + list(g.final_logprobs)))
        return runs

    first, second = run(), run()
    assert all(tokens and entries for tokens, entries in first)
    assert first == second
