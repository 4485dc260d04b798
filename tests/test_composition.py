"""Issue 12: principles that compose, on the real default model: the
one-principle form through ``principles`` equals the shorthand, the negative
form equals the two-stream combine of the rendered prompts, several
principles follow a teacher-forced numpy reference, all streams go in one
llama_decode per step, and bad input is a clear error in Python, on the
command line and from the server (which keeps serving)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import openai
import pytest

import linalign
from linalign.options import DEFAULT_RATIO
from linalign.principles import Principle, compose, parse_principle_flag
from linalign.server.presets import PresetError, read_presets_file
from test_composition_math import nucleus_bounds, reference_combine
from test_server import API_KEY, Server

ASK = [{"role": "user", "content": "Why is the sky blue?"}]
PIRATE, FRENCH, BRIEF = "Always answer like a pirate.", "Answer in French.", "Be very brief."
GREEDY = dict(temperature=0, max_tokens=16, seed=1)


@pytest.fixture(scope="module")
def exact(model_path):
    """No prompt cache, and a KV buffer per stream (in the pool cells lie
    where it has room): a repeated prompt is decoded again exactly as the
    first time."""
    with linalign.Aligner(model_path, n_ctx=512, n_threads=2, cache_prompt=False, max_principles=4,
                          kv_unified=False) as a:
        yield a


def _text(out) -> str:
    return out["choices"][0]["message"]["content"]


# -- equalities -----------------------------------------------------------------

def test_one_principle_through_principles_is_the_shorthand(exact) -> None:
    args = dict(logprobs=True, top_logprobs=5, **GREEDY)
    short = exact.create_chat_completion(ASK, principle=PIRATE, ratio=3.0, **args)
    listed = exact.create_chat_completion(ASK, principles=[{"text": PIRATE, "ratio": 3.0}], **args)
    assert _text(short) == _text(listed) and _text(short)
    # the distribution each token was drawn from, bit for bit
    assert short["choices"][0]["logprobs"] == listed["choices"][0]["logprobs"]
    # a plain string takes the default ratio (2)
    assert (_text(exact.create_chat_completion(ASK, principles=[PIRATE], **GREEDY))
            == _text(exact.create_chat_completion(ASK, principle=PIRATE, **GREEDY)))


def test_negative_principle_is_the_two_stream_combine_of_its_prompts(exact) -> None:
    """Toward one principle and away from the other: stream B holds the
    negative principle, the same as a completion over the two rendered prompts."""
    toward, away = exact.render_chat(ASK, PIRATE)[0], exact.render_chat(ASK, BRIEF)[0]
    chat = exact.create_chat_completion(ASK, principle=PIRATE, negative_principle=BRIEF, **GREEDY)
    completion = exact.create_completion(toward, away, **GREEDY)
    assert _text(chat) == completion["choices"][0]["text"]
    # away only: the plain prompt against the negative one
    plain = exact.render_chat(ASK, "")[0]
    only_away = exact.create_chat_completion(ASK, negative_principle=BRIEF, **GREEDY)
    assert _text(only_away) == exact.create_completion(plain, away, **GREEDY)["choices"][0]["text"]
    assert _text(only_away) != _text(exact.create_chat_completion(ASK, **GREEDY))


def test_two_principles_follow_the_numpy_reference(exact) -> None:
    """Each stream holds its own prompt (its first logits are those of that
    prompt decoded alone, not of another stream's), and every token is the
    argmax of the reference combine over the union of nuclei, computed from
    the logits the streams really had at that step."""
    principles = [Principle(PIRATE, 2.0), Principle(FRENCH, 1.0)]
    request = exact.chat_request(ASK, principles=principles, options=linalign.SamplingOptions(**GREEDY))
    p1, base, p2 = request.prompts
    engine = exact.engine
    t1, t0 = (x[-1] for x in exact.eval_logits(p1, base))  # before the request: it needs the one slot
    t2 = exact.eval_logits(p2, base)[0][-1]
    gen = exact.submit(request)
    steps = 0
    while not gen.done:
        n_before = len(gen.tokens)
        if engine.step() == 0 or len(gen.tokens) == n_before:
            continue
        if gen.done:
            break  # its slot (and logits) went with the last token
        l1, l0, l2 = (np.array(engine.logits(gen, s)) for s in (0, 1, 2))
        if steps == 0:
            for mine, right, wrong in ((l1, t1, t2), (l2, t2, t1), (l0, t0, t1)):
                assert np.abs(mine - right).max() < 1.0 < np.abs(mine - wrong).max()
        kept = set()
        for lk in (l1, l2):
            kept |= nucleus_bounds(lk, 0.8, 1.0)[1]
        ids = np.array(sorted(kept))
        values = reference_combine(ids, [l1, l2], [2.0, 1.0], l0)
        chosen = gen.tokens[-1]
        assert chosen in kept and values[ids == chosen][0] >= values.max() - 1e-4, f"step {steps}"
        steps += 1
    assert steps >= 4


def test_all_streams_decode_in_one_llama_decode_per_step(exact) -> None:
    engine = exact.engine
    request = exact.chat_request(ASK, principles=[PIRATE, FRENCH, BRIEF], options=linalign.SamplingOptions(**GREEDY))
    gen = exact.submit(request)
    assert engine.active_streams(gen) == 4
    steps, before = 0, engine.n_decode_calls
    while not gen.done:
        steps += 1
        engine.step()
    assert engine.n_decode_calls - before == steps
    assert gen.completion_tokens >= 1


def test_k_principles_grow_the_context_only_when_asked(model_path) -> None:
    with linalign.Aligner(model_path, n_ctx=256, n_threads=2) as a:
        assert a.max_principles == 1
        a.create_chat_completion(ASK, principle=PIRATE, max_tokens=2)
        assert a.max_principles == 1
        a.create_chat_completion(ASK, principles=[PIRATE, FRENCH, BRIEF], max_tokens=2)
        assert a.max_principles == 3
    with linalign.Aligner(model_path, n_ctx=256, n_threads=2, max_principles=1) as a:
        with pytest.raises(ValueError, match="max_principles=1"):
            a.create_chat_completion(ASK, principles=[PIRATE, FRENCH], max_tokens=2)
        assert _text(a.create_chat_completion(ASK, principle=PIRATE, max_tokens=2))


def test_composed_completions_and_streaming(exact) -> None:
    kw = dict(principles=[PIRATE, BRIEF], negative_principle="Be formal.", temperature=0, max_tokens=10)
    whole = exact.create_completion("The sea is", **kw)["choices"][0]["text"]
    streamed = "".join(c["choices"][0]["text"] for c in exact.create_completion("The sea is", stream=True, **kw))
    assert whole == streamed and whole
    chat_whole = _text(exact.create_chat_completion(ASK, **kw))
    chat_streamed = "".join(c["choices"][0]["delta"].get("content", "")
                            for c in exact.create_chat_completion(ASK, stream=True, **kw))
    assert chat_whole == chat_streamed
    with pytest.raises(TypeError, match="text"):
        exact.create_completion([1, 2, 3], principles=[PIRATE], max_tokens=2)


# -- bad input --------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(principles=[]), ValueError, "principles is empty"),
    (dict(principles=["  "]), ValueError, r"principles\[0\]\.text is empty"),
    (dict(principles=[{"text": ""}]), ValueError, r"principles\[0\]\.text is empty"),
    (dict(principles=[PIRATE] * 9), ValueError, "at most 8"),
    (dict(principles=[{"text": PIRATE, "ratio": float("inf")}]), ValueError, "finite"),
    (dict(principles=[{"text": PIRATE, "ratio": 1e9}]), ValueError, r"\[-100, 100\]"),
    (dict(principles=[{"text": PIRATE, "ratio": "2"}]), ValueError, "a number or .auto."),  # a string: only "auto"
    (dict(principles=[{"text": PIRATE, "weight": 2}]), ValueError, "unknown field"),
    (dict(principles=[7]), TypeError, r"principles\[0\]"),
    (dict(principles="Be brief"), TypeError, "list"),
    (dict(principle=PIRATE, principles=[FRENCH]), ValueError, "principle and principles"),
    (dict(principles=[FRENCH], ratio=3.0), ValueError, "principles and ratio"),
    (dict(principle=PIRATE, negative_principle=f"  {PIRATE} "), ValueError, "negative_principle equals principle"),
    (dict(principles=[FRENCH, PIRATE], negative_principle=PIRATE), ValueError, r"principles\[1\]\.text"),
    (dict(negative_principle="   "), ValueError, "whitespace"),
    (dict(negative_principle=3), TypeError, "negative_principle"),
])
def test_bad_principles_are_clear_errors(exact, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        exact.create_chat_completion(ASK, max_tokens=2, **kwargs)
    assert _text(exact.create_chat_completion(ASK, principle="", max_tokens=2)) is not None  # still usable


def test_an_empty_principle_is_still_plain_decoding(exact) -> None:
    assert (_text(exact.create_chat_completion(ASK, principle="", **GREEDY))
            == _text(exact.create_chat_completion(ASK, **GREEDY)))


@pytest.mark.parametrize(("flag", "parsed"), [
    ("Be brief", "Be brief"), ("Be brief: really", "Be brief: really"), ("Be brief:3", Principle("Be brief", 3.0)),
    ("Note: x:-0.5", Principle("Note: x", -0.5)), ("x:nan", "x:nan"),
])
def test_principle_flag(flag, parsed) -> None:
    assert parse_principle_flag(flag) == parsed


def test_cli_composes_principles(model_path) -> None:
    run = lambda *args: subprocess.run([sys.executable, "-m", "linalign", *args], capture_output=True, text=True,
                                       timeout=300)
    ok = run("Why is the sky blue?", "--model", str(model_path), "--principle", f"{PIRATE}:3", "--principle", BRIEF,
             "--negative-principle", "Be formal.", "-n", "6", "--temperature", "0", "--compare", "--n-ctx", "512")
    assert ok.returncode == 0, ok.stderr
    assert f"principle: {PIRATE} (ratio 3)" in ok.stdout and "negative principle: Be formal." in ok.stdout
    assert ok.stdout.count("===") == 6
    bad = run("Hi", "--model", str(model_path), "--principle", PIRATE, "--negative-principle", PIRATE, "-n", "2")
    assert bad.returncode == 2 and "negative_principle equals" in bad.stderr and "Traceback" not in bad.stderr


def test_preset_files_take_principles_and_a_negative_one(tmp_path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[fr]\nprinciples = [{ text = "Answer in French.", ratio = 2 }, "Be brief."]\n'
                    'negative_principle = "Be rude."\n[away]\nnegative_principle = "Be rude."\nratio = 1.5\n')
    fr, away = read_presets_file(path)
    # a principle without a ratio takes the default
    assert fr.principles == (Principle(FRENCH, 2.0), Principle("Be brief.", DEFAULT_RATIO))
    assert fr.negative_principle == "Be rude."
    assert fr.composition().k == 2 and away.composition().negative == "Be rude."
    for text, message in [('[p]\nprinciples = []\n', "principles is empty"),
                          ('[p]\nprinciple = "x"\nprinciples = ["y"]\n', "principle and principles"),
                          ('[p]\nprinciples = ["y"]\nratio = 2\n', "principles and ratio"),
                          ('[p]\nprinciple = "x"\nnegative_principle = "x"\n', "negative_principle equals")]:
        path.write_text(text)
        with pytest.raises(PresetError, match=message):
            read_presets_file(path)


# -- the server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("composed") / "presets.json"
    path.write_text('{"fr": {"principles": [{"text": "Answer in French.", "ratio": 2}, '
                    '{"text": "Always answer like a pirate.", "ratio": 1}], "negative_principle": "Be rude.", '
                    '"temperature": 0, "max_tokens": 10}}')
    srv = Server("--parallel", "2", "--presets", str(path), "--no-cache-prompt", api_key=API_KEY)
    yield srv
    srv.stop()


def test_server_composes_principles(server: Server) -> None:
    client = server.client()
    body = {"principles": [{"text": FRENCH, "ratio": 2}, {"text": PIRATE, "ratio": 1}], "negative_principle": "Be rude."}
    spelled = client.chat.completions.create(model="m", messages=ASK, temperature=0, max_tokens=10, extra_body=body)
    preset = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1.gguf:fr", messages=ASK)
    assert preset.choices[0].message.content == spelled.choices[0].message.content
    assert spelled.usage.completion_tokens == 10
    stream = client.chat.completions.create(model="m", messages=ASK, temperature=0, max_tokens=10, stream=True,
                                            extra_body=body)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == spelled.choices[0].message.content
    done = client.completions.create(model="m", prompt="The sea is", temperature=0, max_tokens=6, extra_body=body)
    assert done.usage.completion_tokens >= 1
    models = client.models.list().data
    assert models[1].model_extra["linalign"]["principles"][0] == {"text": FRENCH, "ratio": 2.0}


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"principle": PIRATE, "principles": [FRENCH]}, "principle", "principle and principles"),
    ({"principles": [FRENCH], "alignment_ratio": 2}, "principles", "alignment_ratio"),
    ({"principles": [{"text": " "}]}, "principles", "empty"),
    ({"principles": [FRENCH] * 9}, "principles", "at most 8"),
    # the pool's default: 4 principles a request
    ({"principles": [FRENCH, PIRATE, BRIEF, "Be kind.", "Be wise."]}, "principles", "--max-principles 5"),
    ({"principles": [{"text": FRENCH, "ratio": 1e300}]}, "principles", "100"),
    ({"principles": "x"}, "principles", "array"),
    ({"principle": PIRATE, "negative_principle": PIRATE}, "negative_principle", "equals"),
    ({"negative_principle": 5}, "negative_principle", "string"),
])
def test_server_bad_principles_are_400_naming_the_field(server: Server, body, param, message) -> None:
    for path, extra in (("/v1/chat/completions", {"messages": ASK}), ("/v1/completions", {"prompt": "Hi"})):
        r = server.post(path, {"max_tokens": 2, **extra, **body})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and message in error["message"], error
    assert server.post("/v1/chat/completions", {"messages": ASK, "max_tokens": 2}).status_code == 200


def test_server_principles_need_a_text_prompt(server: Server) -> None:
    r = server.post("/v1/completions", {"prompt": [1, 2, 3], "principles": [FRENCH], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "principles"


def test_server_principle_position(server: Server) -> None:
    ok = server.post("/v1/chat/completions", {"messages": ASK, "max_tokens": 3, "principle": PIRATE,
                                              "principle_position": "end"})
    assert ok.status_code == 200, ok.text
    for path, extra, position in (("/v1/chat/completions", {"messages": ASK}, "middle"),
                                  ("/v1/completions", {"prompt": "Hi"}, "end")):
        r = server.post(path, {"max_tokens": 2, "principle": PIRATE, "principle_position": position, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == "principle_position", r.text
