"""KV reuse: a follow-up turn decodes only its new tokens; a shared prompt
prefix is decoded once for both streams."""
from __future__ import annotations

PRINCIPLE = "Always answer like a pirate."


def test_second_turn_decodes_only_new_tokens(aligner):
    aligner.engine.clear()
    history = [{"role": "user", "content": "Hi! Who are you?"}]
    first = aligner.create_chat_completion(history, principle=PRINCIPLE, max_tokens=16, temperature=0.0)
    first_prefill = aligner.last_prefill
    assert first_prefill["reused"] == (0, 0)

    history += [first["choices"][0]["message"], {"role": "user", "content": "What do you eat?"}]
    aligner.create_chat_completion(history, principle=PRINCIPLE, max_tokens=8, temperature=0.0)
    second = aligner.last_prefill
    text_p, text_b = aligner.render_chat(history, PRINCIPLE)
    n_p, n_b = len(aligner.tokenize(text_p, add_bos=False)), len(aligner.tokenize(text_b, add_bos=False))
    for stream, n in enumerate((n_p, n_b)):
        assert second["reused"][stream] + second["decoded"][stream] == n
        assert second["reused"][stream] >= first_prefill["decoded"][stream]  # the whole first prompt was kept
        assert second["decoded"][stream] < n / 2


def test_long_shared_prefix_is_decoded_once(aligner):
    document = "Notes on the water cycle: evaporation, condensation, precipitation and collection. " * 3
    prompt, base = document + "Principle: be brief. Question?", document + "Question?"
    aligner.engine.clear()
    aligner.create_completion(prompt, base, max_tokens=1)
    stats = aligner.last_prefill
    n_p, n_b = len(aligner.tokenize(prompt)), len(aligner.tokenize(base))
    assert stats["shared"] >= 32  # the document, decoded once and copied to the other stream
    assert stats["decoded"][0] == n_p and stats["decoded"][1] == n_b  # shared tokens count for both
    assert stats["reused"] == (0, 0)

    # a new question on the same document: the base stream takes the document
    # from the prompt stream's cache instead of decoding it again
    aligner.engine.clear()
    aligner.create_completion(prompt, "Other words. " + base, max_tokens=1)  # fills P's cache only with the prompt
    aligner.create_completion(prompt, base, max_tokens=1)
    stats = aligner.last_prefill
    assert stats["shared"] == 0
    assert stats["reused"][1] >= 32


def test_short_shared_prefix_is_decoded_in_the_one_batch(aligner):
    aligner.engine.clear()
    calls = aligner.engine.n_decode_calls
    aligner.create_completion("Common start. Principle: be brief. Question?", "Common start. Question?", max_tokens=1)
    assert aligner.last_prefill["shared"] == 0  # a copy of a stream's buffer costs more than these few tokens
    assert aligner.engine.n_decode_calls - calls == 1  # both prompts in one llama_decode


def test_identical_prompts_repeat_reuses_everything_but_last(aligner):
    aligner.create_completion("The same prompt again", None, max_tokens=2, temperature=0.0)
    aligner.create_completion("The same prompt again", None, max_tokens=2, temperature=0.0)
    assert aligner.last_prefill["decoded"] == (1, 1)
