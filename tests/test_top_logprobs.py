"""``top_logprobs`` always holds the k entries asked for, as OpenAI's do:
the alignment nucleus first, then stream P's next tokens at -9999.0; and
logprobs under a grammar describe the distribution actually sampled.

The Python API and the server, chat and completions, streamed and not."""
from __future__ import annotations

import json
from typing import Iterator

import httpx
import pytest

from linalign.logprobs import ZERO_LOGPROB
from test_server import API_KEY, Server

K = 3
PIRATE = "Always answer like a pirate."
SAY_HELLO = [{"role": "user", "content": "Say hello and tell me about your day."}]
# the default nucleus (top_p 0.8) with a pirate principle leaves a single
# token at several of these positions
CHAT_ARGS = dict(max_tokens=24, seed=1, principle=PIRATE)
GRAMMAR = 'root ::= "{" [a-z]+ "}"'


def assert_k_sorted_with_fillers(tops: list[list[float]], k: int = K) -> None:
    """Every position holds exactly k logprobs, most likely first, and the
    fillers (-9999.0) come only after the nucleus's tokens."""
    assert tops
    for logprobs in tops:
        assert len(logprobs) == k
        assert logprobs == sorted(logprobs, reverse=True)
        real = [lp for lp in logprobs if lp != ZERO_LOGPROB]
        assert all(lp > ZERO_LOGPROB for lp in real)
        assert real, "the nucleus holds at least one token"


def chat_tops(response: dict) -> list[list[float]]:
    return [[t["logprob"] for t in e["top_logprobs"]] for e in response["choices"][0]["logprobs"]["content"]]


def chat_chosen(response: dict) -> list[float]:
    return [e["logprob"] for e in response["choices"][0]["logprobs"]["content"]]


def streamed_chat_content(chunks: Iterator[dict]) -> list[dict]:
    content = []
    for chunk in chunks:
        if chunk["choices"] and chunk["choices"][0].get("logprobs"):
            content.extend(chunk["choices"][0]["logprobs"]["content"])
    return content


# -- the Python API -----------------------------------------------------------

def test_chat_top_logprobs_hold_k_entries_with_fillers(aligner) -> None:
    r = aligner.create_chat_completion(SAY_HELLO, logprobs=True, top_logprobs=K, **CHAT_ARGS)
    tops = chat_tops(r)
    assert_k_sorted_with_fillers(tops)
    assert any(ZERO_LOGPROB in t for t in tops), "this case has positions whose nucleus is smaller than k"


def test_fillers_leave_the_chosen_tokens_logprob_unchanged(aligner) -> None:
    """The same tokens with k = 0 (no alternatives) and k = 3: the chosen
    token's logprob and the nucleus's entries do not move."""
    without = aligner.create_chat_completion(SAY_HELLO, logprobs=True, top_logprobs=0, **CHAT_ARGS)
    with_k = aligner.create_chat_completion(SAY_HELLO, logprobs=True, top_logprobs=K, **CHAT_ARGS)
    assert without["choices"][0]["message"] == with_k["choices"][0]["message"]
    assert chat_chosen(without) == chat_chosen(with_k)
    for entry in with_k["choices"][0]["logprobs"]["content"]:
        listed = {t["token"]: t["logprob"] for t in entry["top_logprobs"]}
        if entry["token"] in listed:
            assert listed[entry["token"]] == entry["logprob"]
        assert entry["logprob"] > ZERO_LOGPROB  # the chosen token is always in the nucleus


def test_linalign_object_still_says_what_alignment_changed(aligner) -> None:
    r = aligner.create_chat_completion(SAY_HELLO, logprobs=True, top_logprobs=K, **CHAT_ARGS)
    entries = r["choices"][0]["logprobs"]["content"]
    assert any(e["linalign"]["changed"] for e in entries)
    for e in entries:
        assert e["linalign"]["changed"] == (e["linalign"]["plain_top_token"] != e["token"])


def test_streamed_chat_top_logprobs_hold_k_entries(aligner) -> None:
    content = streamed_chat_content(aligner.create_chat_completion(
        SAY_HELLO, logprobs=True, top_logprobs=K, stream=True, **CHAT_ARGS))
    assert_k_sorted_with_fillers([[t["logprob"] for t in e["top_logprobs"]] for e in content])


@pytest.mark.parametrize("stream", [False, True])
def test_completion_top_logprobs_hold_k_entries(aligner, stream: bool) -> None:
    kw = dict(max_tokens=16, seed=1, principle=PIRATE, logprobs=K)
    if stream:
        tops = [top for chunk in aligner.create_completion("The sea is", stream=True, **kw)
                if chunk["choices"][0]["logprobs"] for top in chunk["choices"][0]["logprobs"]["top_logprobs"]]
    else:
        tops = aligner.create_completion("The sea is", **kw)["choices"][0]["logprobs"]["top_logprobs"]
    assert tops
    for top in tops:
        # OpenAI's legacy shape: the k most likely tokens, and the chosen one
        assert len(top) in (K, K + 1)
    assert any(ZERO_LOGPROB in top.values() for top in tops)


def test_grammar_logprobs_describe_the_distribution_sampled(aligner) -> None:
    r = aligner.create_chat_completion(SAY_HELLO, logprobs=True, top_logprobs=K, grammar=GRAMMAR, **CHAT_ARGS)
    text = r["choices"][0]["message"]["content"]
    assert text.startswith("{") and text.endswith("}")
    entries = r["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == text
    assert_k_sorted_with_fillers(chat_tops(r))
    # the first position allows "{" alone: it holds all the probability
    first = entries[0]
    assert first["token"] == "{" and first["logprob"] == 0.0
    assert first["top_logprobs"][0]["token"] == "{"
    assert all(t["logprob"] == ZERO_LOGPROB for t in first["top_logprobs"][1:])
    assert first["linalign"]["plain_top_token"] == "{"  # the plain stream's top among what the grammar allows
    for e in entries[1:-1]:  # letters only: the grammar's tokens are a-z pieces
        for t in e["top_logprobs"]:
            if t["logprob"] != ZERO_LOGPROB:
                assert set(t["token"]) <= set("abcdefghijklmnopqrstuvwxyz}")


def test_greedy_grammar_logprobs_pick_the_most_likely_allowed_token(aligner) -> None:
    r = aligner.create_chat_completion(SAY_HELLO, logprobs=True, top_logprobs=K, grammar=GRAMMAR, temperature=0,
                                       max_tokens=8, principle=PIRATE)
    for e in r["choices"][0]["logprobs"]["content"]:
        assert e["token"] == e["top_logprobs"][0]["token"]
        assert e["logprob"] == e["top_logprobs"][0]["logprob"]


# -- the server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server("--parallel", "1", api_key=API_KEY)
    yield srv
    srv.stop()


def _sse(srv: Server, path: str, body: dict) -> list[dict]:
    chunks = []
    with httpx.stream("POST", f"{srv.url}{path}", json=body, headers=srv.headers(), timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


@pytest.mark.parametrize("stream", [False, True])
def test_server_chat_top_logprobs_hold_k_entries(server: Server, stream: bool) -> None:
    body = {"messages": SAY_HELLO, "logprobs": True, "top_logprobs": K, "stream": stream, **CHAT_ARGS}
    if stream:
        content = streamed_chat_content(iter(_sse(server, "/v1/chat/completions", body)))
    else:
        r = server.post("/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        content = r.json()["choices"][0]["logprobs"]["content"]
    tops = [[t["logprob"] for t in e["top_logprobs"]] for e in content]
    assert_k_sorted_with_fillers(tops)
    assert any(ZERO_LOGPROB in t for t in tops)


@pytest.mark.parametrize("stream", [False, True])
def test_server_completion_top_logprobs_hold_k_entries(server: Server, stream: bool) -> None:
    body = {"prompt": "The sea is", "logprobs": K, "max_tokens": 16, "seed": 1, "principle": PIRATE,
            "stream": stream}
    if stream:
        tops = [top for c in _sse(server, "/v1/completions", body) if c["choices"] and c["choices"][0]["logprobs"]
                for top in c["choices"][0]["logprobs"]["top_logprobs"]]
    else:
        r = server.post("/v1/completions", body)
        assert r.status_code == 200, r.text
        tops = r.json()["choices"][0]["logprobs"]["top_logprobs"]
    assert tops and all(len(top) in (K, K + 1) for top in tops)
    assert any(ZERO_LOGPROB in top.values() for top in tops)


def test_server_logprobs_with_response_format(server: Server) -> None:
    r = server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Give me a JSON object about a cat."}], "max_tokens": 12,
        "seed": 3, "response_format": {"type": "json_object"}, "logprobs": True, "top_logprobs": K})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["content"].lstrip().startswith("{")
    assert_k_sorted_with_fillers(chat_tops(r.json()))
