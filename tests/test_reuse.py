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


def test_shared_prefix_is_decoded_once(aligner):
    aligner.engine.clear()
    aligner.create_completion("Common start. Principle: be brief. Question?", "Common start. Question?", max_tokens=1)
    stats = aligner.last_prefill
    assert stats["shared"] >= 3  # "Common start." belongs to both sequences


def test_identical_prompts_repeat_reuses_everything_but_last(aligner):
    aligner.create_completion("The same prompt again", None, max_tokens=2, temperature=0.0)
    aligner.create_completion("The same prompt again", None, max_tokens=2, temperature=0.0)
    assert aligner.last_prefill["decoded"] == (1, 1)
