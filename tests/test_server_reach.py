"""Issue 15: presets served as model ids, logprobs in OpenAI's shapes with
what the alignment changed, through the official ``openai`` client against a
real server (the ``Server`` helper of test_server.py), plus the Python API
and the parts that need no model."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import openai
import pytest

from linalign.engine import Generation, GenerationRequest
from linalign.logprobs import TokenLogprob
from linalign.options import SamplingOptions
from linalign.server.presets import (Preset, PresetError, Presets, UnknownModelError, load_presets, parse_preset_flag,
                                     read_presets_file)
from test_server import API_KEY, Server

BASE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIRATE = "Always answer like a pirate."
SAY_HELLO = [{"role": "user", "content": "Say hello and tell me about your day."}]


# -- presets: parsing (no model) ----------------------------------------------

@pytest.mark.parametrize(("flag", "principle", "ratio"), [
    ("pirate=Always answer like a pirate.:4", PIRATE, 4.0),
    ("p=Be brief: really", "Be brief: really", None),
    ("p=Be brief", "Be brief", None),
    ("p=Note: be brief: 2.5", "Note: be brief", 2.5),
    ("p=Ratio:-1e0", "Ratio", -1.0),
    ("p=Say nan:nan", "Say nan:nan", None),
    ("p=Go:inf", "Go:inf", None),
    ("a.b_c-9=x", "x", None),
])
def test_preset_flag(flag: str, principle: str, ratio: float | None) -> None:
    preset = parse_preset_flag(flag)
    assert (preset.principle, preset.ratio) == (principle, ratio)


@pytest.mark.parametrize("flag", ["noequals", "bad name=x", "a:b=x", "=x", "p=", "p=   :3", "x" * 65 + "=y"])
def test_bad_preset_flag_is_an_error(flag: str) -> None:
    with pytest.raises(PresetError, match="--preset"):
        parse_preset_flag(flag)


def test_presets_file_toml_and_json(tmp_path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text('kid = "The user is a child."\n[pirate]\nprinciple = "Arr."\nalignment_ratio = 3\n'
                    'temperature = 0\ntop_k = 10\nmax_tokens = 20\n')
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"poet": {"principle": "Write like a poet.", "ratio": 1.5, "min_p": 0.1}}))
    presets = load_presets(["x=Be brief.:1"], [toml, js])
    by_name = {p.name: p for p in presets}
    assert by_name["kid"] == Preset("kid", "The user is a child.", None, {}, str(toml))
    assert by_name["pirate"].ratio == 3.0
    assert by_name["pirate"].sampling == {"temperature": 0, "top_k": 10, "max_tokens": 20}
    assert by_name["poet"].defaults() == {"ratio": 1.5, "min_p": 0.1}


@pytest.mark.parametrize(("suffix", "text", "message"), [
    (".toml", '[p]\nprinciple = "x"\ntemprature = 1\n', r"p\.toml: p\.temprature: unknown field"),
    (".toml", '[p]\nprinciple = "x"\nstop = ["a"]\n', r"p\.stop: unknown field \(stop strings"),
    (".toml", '[p]\nprinciple = "x"\nnegative_principle = " x"\n', r"p: negative_principle equals principle"),
    (".json", '{"p": {"principle": "x", "principles": ["a"]}}', r"p: principle and principles"),
    (".toml", '[p]\nprinciple = "x"\nprinciple_position = "middle"\n', r"p: principle_position must be one of"),
    (".toml", '[p]\nprinciple = "x"\ntemperature = -1\n', r"p\.temperature: must be >= 0"),
    (".toml", '[p]\nprinciple = "x"\ntop_k = 1.5\n', r"p\.top_k: must be an integer"),
    (".toml", '[p]\nprinciple = "x"\nratio = 1\nalignment_ratio = 2\n', "not both"),
    (".toml", '[p]\nratio = 1\n', "'principle' is missing"),
    (".toml", 'p = 3\n', "expected a principle"),
    (".toml", '"bad name" = "x"\n', "preset name 'bad name'"),
    (".toml", '[p]\nprinciple = "x"\n[p]\nprinciple = "y"\n', r"not valid TOML: .*line 3"),
    (".toml", 'p = "x\n', "not valid TOML"),
    (".json", '{"p": "x",\n "p": "y"}', "key 'p' appears twice"),
    (".json", '{"p": "x",\n }', r"not valid JSON: .*line 2"),
    (".json", '["p"]', "expected an object"),
])
def test_bad_presets_file_names_the_file_and_key(tmp_path, suffix: str, text: str, message: str) -> None:
    path = tmp_path / f"p{suffix}"
    path.write_text(text)
    with pytest.raises(PresetError, match=message) as e:
        read_presets_file(path)
    assert str(path) in str(e.value)


def test_a_name_defined_twice_is_an_error_naming_both(tmp_path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"pirate": "Arr."}')
    with pytest.raises(PresetError, match=r"'pirate' is defined twice: in --preset and in .*p\.json"):
        load_presets(["pirate=Be a pirate."], [path])


def test_model_id_rule() -> None:
    presets = Presets("base.gguf", [Preset("pirate", PIRATE)])
    assert presets.ids == ["base.gguf", "base.gguf:pirate"]
    assert presets.resolve(None) is None
    assert presets.resolve("base.gguf") is None
    assert presets.resolve("gpt-4o") is None  # no colon: the base model (old clients keep working)
    assert presets.resolve("base.gguf:pirate").principle == PIRATE
    for unknown in ("base.gguf:ninja", "other:pirate", "x:y", ":"):
        with pytest.raises(UnknownModelError):
            presets.resolve(unknown)


@pytest.mark.parametrize(("args", "needle"), [
    (["--preset", "bad name=x"], "preset name 'bad name'"),
    (["--presets", "{dir}/p.toml"], "p.toml: p.temprature: unknown field"),
    (["--presets", "{dir}/missing.json"], "missing.json: cannot read it"),
    (["--preset", "p=x", "--presets", "{dir}/p2.json"], "'p' is defined twice"),
])
def test_serve_with_a_bad_preset_exits_2_without_a_traceback(tmp_path, args: list[str], needle: str) -> None:
    (tmp_path / "p.toml").write_text('[p]\nprinciple = "x"\ntemprature = 1\n')
    (tmp_path / "p2.json").write_text('{"p": "y"}')
    cmd = [sys.executable, "-m", "linalign", "serve", "--port", "0", *[a.format(dir=tmp_path) for a in args]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


# -- a generation's logprob entries and its text deltas (no model) ------------

def _entry(token: int, piece: bytes) -> TokenLogprob:
    return TokenLogprob(token=token, piece=piece, logprob=-0.5, top=(), plain_top_token=token, plain_top_piece=piece,
                        plain_top_logprob=-0.5, logprob_principled=-0.5, logprob_plain=-0.5)


def _feed(pieces: list[bytes], stop: tuple[str, ...] = ()) -> tuple[list[tuple[str, list[int]]], list[int]]:
    gen = Generation(request=GenerationRequest([1], [1], SamplingOptions(), stop, want_logprobs=0), limit=100)
    for i, piece in enumerate(pieces):
        gen._push_token(piece, _entry(i, piece))
        if gen.assembler.stopped:
            break
    gen._finish("stop")
    chunks = []
    while (chunk := gen.pop_chunk()) is not None:
        chunks.append((chunk[0], [e.token for e in chunk[1]]))
    return chunks, [e.token for e in gen.final_logprobs]


def test_each_token_comes_with_the_delta_that_completes_its_text() -> None:
    euro = "€".encode()  # three bytes, split over two tokens
    chunks, final = _feed([b"a", euro[:2], euro[2:] + b"b", b"c"])
    assert chunks == [("a", [0]), ("€b", [1, 2]), ("c", [3])]
    assert final == []


def test_tokens_held_for_a_stop_string_come_later_and_the_stop_strings_are_dropped() -> None:
    chunks, final = _feed([b"x", b" EN", b"Tx", b" EN", b"D"], stop=(" END",))
    # " EN" is held (it may begin " END"), "Tx" shows it did not; the second " EN" and "D" are the stop
    assert chunks == [("x", [0]), (" ENTx", [1, 2])]
    assert final == []


def test_a_token_that_straddles_the_stop_string_comes_in_the_last_chunk() -> None:
    chunks, final = _feed([b"ab", b"c<st", b"op>"], stop=("<stop>",))
    # "c" went out before the stop was known; the token is complete (as far as it will be) at the stop
    assert chunks == [("ab", [0]), ("c", [])]
    assert final == [1]


def test_a_held_tail_at_the_end_is_flushed_with_its_tokens() -> None:
    chunks, final = _feed([b"ok", b" EN"], stop=(" END",))
    assert chunks == [("ok", [0]), (" EN", [1])]


# -- the Python API -------------------------------------------------------------

def test_python_api_chat_logprobs(aligner) -> None:
    kw = dict(principle=PIRATE, ratio=4, temperature=0, max_tokens=10, logprobs=True, top_logprobs=3)
    aligner.create_chat_completion(SAY_HELLO, **kw)
    r = aligner.create_chat_completion(SAY_HELLO, **kw)
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"] == 10
    assert "".join(e["token"] for e in content) == r["choices"][0]["message"]["content"]
    for e in content:
        assert len(e["top_logprobs"]) <= 3
        assert e["top_logprobs"][0]["token"] == e["token"]  # greedy: the most likely aligned token
        assert set(e["linalign"]) == {"plain_top_token", "plain_top_logprob", "logprob_principled", "logprob_plain",
                                      "changed", "ratio", "echo_guarded"}
    assert any(e["linalign"]["changed"] for e in content)
    streamed = [e for c in aligner.create_chat_completion(SAY_HELLO, stream=True, **kw)
                if c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]
    assert streamed == content
    assert aligner.create_chat_completion(SAY_HELLO, max_tokens=2)["choices"][0]["logprobs"] is None


def test_python_api_completion_logprobs(aligner) -> None:
    r = aligner.create_completion("The sea is", logprobs=2, temperature=0, max_tokens=5)
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["linalign"]) == 5
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert lp["text_offset"][0] == len("The sea is")
    assert all(len(top) <= 3 for top in lp["top_logprobs"])


@pytest.mark.parametrize(("kwargs", "error"), [
    (dict(logprobs=True, top_logprobs=21), ValueError),
    (dict(logprobs=True, top_logprobs=-1), ValueError),
    (dict(logprobs=True, top_logprobs=1.5), TypeError),
    (dict(top_logprobs=2), ValueError),
    (dict(logprobs="yes"), TypeError),
])
def test_python_api_bad_logprobs(aligner, kwargs: dict, error: type) -> None:
    with pytest.raises(error, match="logprobs"):
        aligner.create_chat_completion(SAY_HELLO, max_tokens=2, **kwargs)


def test_python_api_bad_completion_logprobs(aligner) -> None:
    for k in (21, -1):
        with pytest.raises(ValueError, match="logprobs"):
            aligner.create_completion("Hi", logprobs=k)


# -- the server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("presets") / "presets.toml"
    path.write_text('[kid]\nprinciple = "The user is a five-year-old child."\nratio = 3\ntemperature = 0\n'
                    'top_k = 20\nmax_tokens = 12\n')
    srv = Server("--parallel", "2", "--preset", f"pirate={PIRATE}:4", "--presets", str(path), api_key=API_KEY)
    yield srv
    srv.stop()


def test_models_lists_the_base_model_and_one_id_per_preset(server: Server) -> None:
    models = server.client().models.list().data
    assert [m.id for m in models] == [BASE, f"{BASE}:pirate", f"{BASE}:kid"]
    assert models[1].model_extra["linalign"] == {"preset": "pirate", "principle": PIRATE, "alignment_ratio": 4.0,
                                                 "sampling": {}}


def _chat(srv: Server, **kw):
    kw.setdefault("messages", SAY_HELLO)
    return srv.client().chat.completions.create(**kw)


def test_a_preset_request_equals_the_request_spelled_out(server: Server) -> None:
    preset = dict(model=f"{BASE}:kid")
    spelled = dict(model=BASE, temperature=0, max_tokens=12,
                   extra_body={"principle": "The user is a five-year-old child.", "alignment_ratio": 3, "top_k": 20})
    for args in (preset, spelled):  # each once first: both compared runs from the prompt cache
        _chat(server, **args)
    a, b = _chat(server, **preset), _chat(server, **spelled)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens == b.usage.completion_tokens == 12
    assert a.model == f"{BASE}:kid" and b.model == BASE

    pirate = dict(model=f"{BASE}:pirate", temperature=0, max_tokens=16)
    pirate_spelled = dict(model=BASE, temperature=0, max_tokens=16,
                          extra_body={"principle": PIRATE, "alignment_ratio": 4})
    for args in (pirate, pirate_spelled):
        _chat(server, **args)
    assert _chat(server, **pirate).choices[0].message.content == _chat(server, **pirate_spelled).choices[0].message.content


def test_fields_a_request_sets_override_the_preset(server: Server) -> None:
    plain = dict(model="anything-without-a-colon", temperature=0, max_tokens=12)
    overridden = dict(model=f"{BASE}:kid", extra_body={"principle": ""})
    for args in (plain, overridden):
        _chat(server, **args)
    # principle "" is set: plain decoding, with the preset's sampling defaults (greedy, 12 tokens)
    assert _chat(server, **overridden).choices[0].message.content == _chat(server, **plain).choices[0].message.content
    assert _chat(server, model=f"{BASE}:kid", max_tokens=3).usage.completion_tokens == 3


def test_a_preset_applies_to_completions(server: Server) -> None:
    client = server.client()
    args = dict(prompt="The sea is", max_tokens=8)
    spelled = dict(model=BASE, temperature=0, extra_body={"principle": "The user is a five-year-old child.",
                                                          "alignment_ratio": 3, "top_k": 20}, **args)
    for a in (dict(model=f"{BASE}:kid", **args), spelled):
        client.completions.create(**a)
    assert (client.completions.create(model=f"{BASE}:kid", **args).choices[0].text
            == client.completions.create(**spelled).choices[0].text)


@pytest.mark.parametrize("model", [f"{BASE}:ninja", "other:pirate", "x:y"])
def test_an_unknown_model_id_with_a_colon_is_404(server: Server, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        _chat(server, model=model, max_tokens=2)
    error = e.value.body
    assert (error["type"], error["param"], error["code"]) == ("not_found_error", "model", "model_not_found")
    r = server.post("/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_chat_logprobs_in_openai_shape(server: Server) -> None:
    r = _chat(server, model=f"{BASE}:pirate", temperature=0, max_tokens=16, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode("utf-8", "replace") == t.token
        assert 1 <= len(t.top_logprobs) <= 5
        logprobs = [x.logprob for x in t.top_logprobs]
        assert logprobs == sorted(logprobs, reverse=True)
        assert sum(math.exp(x) for x in logprobs) <= 1 + 1e-6
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        extra = t.model_extra["linalign"]
        if not extra["changed"]:
            assert extra["plain_top_token"] == t.token
        for key in ("plain_top_logprob", "logprob_principled", "logprob_plain"):
            assert extra[key] <= 0
        assert extra["plain_top_logprob"] >= extra["logprob_plain"]
    assert sum(t.model_extra["linalign"]["changed"] for t in content) >= 1


def test_plain_requests_change_nothing(server: Server) -> None:
    r = _chat(server, model=BASE, temperature=0, max_tokens=12, logprobs=True, extra_body={"principle": ""})
    for t in r.choices[0].logprobs.content:
        extra = t.model_extra["linalign"]
        assert not extra["changed"]
        assert extra["plain_top_token"] == t.token
        assert extra["logprob_principled"] == extra["logprob_plain"]
    assert all(t.top_logprobs == [] for t in r.choices[0].logprobs.content)  # top_logprobs absent: 0


def test_streamed_chat_logprobs_equal_the_whole_answer(server: Server) -> None:
    args = dict(model=f"{BASE}:pirate", temperature=0, max_tokens=16, logprobs=True, top_logprobs=2)
    _chat(server, **args)
    whole = _chat(server, **args).choices[0].logprobs.content
    chunks = list(_chat(server, stream=True, **args))
    streamed = []
    for c in chunks:
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content:
            entries = c.choices[0].logprobs.content
            assert "".join(t.token for t in entries) == (c.choices[0].delta.content or "")
            streamed += entries
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in whole]


def test_completion_logprobs_in_openai_legacy_shape(server: Server) -> None:
    client = server.client()
    prompt = "Once upon a time"
    args = dict(model=BASE, prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    client.completions.create(**args)
    r = client.completions.create(**args)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == len(prompt)
    assert [lp.text_offset[i + 1] - lp.text_offset[i] for i in range(7)] == [len(t) for t in lp.tokens[:7]]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[token] == pytest.approx(logprob) and len(top) <= 4
    assert len(lp.model_extra["linalign"]) == 8
    chunks = list(client.completions.create(stream=True, **args))
    streamed = [tok for c in chunks if c.choices and c.choices[0].logprobs for tok in c.choices[0].logprobs.tokens]
    assert streamed == lp.tokens


BAD_LOGPROBS = [
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": 1}, "logprobs"),
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/completions", {"logprobs": -1}, "logprobs"),
]


@pytest.mark.parametrize(("path", "fields", "param"), BAD_LOGPROBS, ids=[f"{p}-{i}" for i, (_, _, p) in
                                                                         enumerate(BAD_LOGPROBS)])
def test_bad_logprobs_are_400_naming_the_field(server: Server, path: str, fields: dict, param: str) -> None:
    body = {"max_tokens": 2, **fields}
    body.update({"messages": SAY_HELLO} if "chat" in path else {"prompt": "Hi"})
    r = server.post(path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"]
    assert _chat(server, model=BASE, max_tokens=2, logprobs=True).usage.completion_tokens <= 2  # still serving
