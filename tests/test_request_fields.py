"""No request field is ignored silently: a field the server does not
implement is a 400 naming it, except the documented ones that change
nothing here (``linalign.server.request_fields``); llama-server's
``cache_prompt`` and ``id_slot`` are honoured; real clients' usual payloads
are served."""
from __future__ import annotations

from typing import Iterator

import openai
import pytest

from linalign.server.request_fields import HARMLESS_FIELDS, REFUSED_FIELDS
from test_server import API_KEY, Server

CHAT = [{"role": "user", "content": "Name a colour."}]
CHAT_PATH, COMPLETION_PATH = "/v1/chat/completions", "/v1/completions"
BASE = {CHAT_PATH: {"messages": CHAT, "max_tokens": 2}, COMPLETION_PATH: {"prompt": "The sea is", "max_tokens": 2}}
# a value of each harmless field as clients send it
HARMLESS_VALUES = {
    "user": "user-1234", "safety_identifier": "abc", "store": False, "metadata": {"app": "test"},
    "service_tier": "auto", "prompt_cache_key": "k", "prediction": {"type": "content", "content": "Blue"},
    "keep_alive": "5m", "timings_per_token": True, "return_progress": False,
}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server("--parallel", "2", api_key=API_KEY)
    yield srv
    srv.stop()


def assert_400_naming(r, param: str) -> dict:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]
    return error


def test_every_harmless_field_has_a_test_value() -> None:
    assert set(HARMLESS_VALUES) == set(HARMLESS_FIELDS)


@pytest.mark.parametrize("path", [CHAT_PATH, COMPLETION_PATH])
@pytest.mark.parametrize("field", sorted(HARMLESS_FIELDS))
def test_harmless_field_is_accepted(server: Server, path: str, field: str) -> None:
    r = server.post(path, {**BASE[path], field: HARMLESS_VALUES[field]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", [CHAT_PATH, COMPLETION_PATH])
@pytest.mark.parametrize("field", ["whatever", "mirostat", "typical_p", "n_predict", "prompt_cache_key_x"])
def test_unknown_field_is_400_naming_it(server: Server, path: str, field: str) -> None:
    error = assert_400_naming(server.post(path, {**BASE[path], field: 1}), field)
    assert "unknown field" in error["message"]


REFUSED = [
    ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
    ("function_call", {"name": "f"}),
    ("logit_bias", {"50256": -100}),
    ("best_of", 2),
    ("modalities", ["text", "audio"]),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("reasoning_effort", "low"),
    ("verbosity", "low"),
    ("web_search_options", {}),
    ("n_probs", 3),
    ("grammar", 'root ::= "a"'),
    ("json_schema", {"type": "object"}),
    ("chat_template_kwargs", {"enable_thinking": True}),
    ("think", True),
    ("ignore_eos", True),
]


def test_every_refused_field_has_a_test_value() -> None:
    assert {name for name, _ in REFUSED} == set(REFUSED_FIELDS)


@pytest.mark.parametrize(("field", "value"), REFUSED, ids=[name for name, _ in REFUSED])
def test_field_that_would_change_the_answer_is_400_naming_it(server: Server, field: str, value: object) -> None:
    assert_400_naming(server.post(CHAT_PATH, {**BASE[CHAT_PATH], field: value}), field)


def test_legacy_functions_point_to_tools(server: Server) -> None:
    error = assert_400_naming(server.post(CHAT_PATH, {**BASE[CHAT_PATH], "functions": REFUSED[0][1]}), "functions")
    assert "send tools" in error["message"]


@pytest.mark.parametrize(("field", "value"), [
    ("tools", []), ("functions", []), ("tool_choice", "none"), ("tool_choice", "auto"), ("function_call", "none"),
    ("parallel_tool_calls", True),
    ("logit_bias", {}), ("best_of", 1), ("modalities", ["text"]), ("chat_template_kwargs", {}), ("think", False),
    ("ignore_eos", False), ("tools", None), ("reasoning_effort", None), ("whatever", None),
])
def test_refused_field_asking_for_nothing_is_accepted(server: Server, field: str, value: object) -> None:
    r = server.post(CHAT_PATH, {**BASE[CHAT_PATH], field: value})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field", ["messages", "top_logprobs"])
def test_a_chat_field_sent_to_completions_is_400(server: Server, field: str) -> None:
    assert_400_naming(server.post(COMPLETION_PATH, {**BASE[COMPLETION_PATH], field: CHAT}), field)


def test_n_above_one_is_400(server: Server) -> None:
    assert_400_naming(server.post(CHAT_PATH, {**BASE[CHAT_PATH], "n": 2}), "n")


# -- llama-server's fields, honoured --------------------------------------------

def _cached(server: Server, content: str = "Tell me about the moon and the tides, briefly.", **fields) -> int:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0, **fields}
    r = server.post(CHAT_PATH, body)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_cache_prompt_false_recomputes_the_prompt(server: Server) -> None:
    _cached(server, id_slot=0)
    assert _cached(server, id_slot=0) > 0
    assert _cached(server, id_slot=0, cache_prompt=False) == 0


def test_id_slot_runs_the_request_in_that_slot(server: Server) -> None:
    # a question no other test asks: slot 1 may hold the chat template's
    # opening from an earlier request, never this question
    question = "Which slot answers the question about slot pinning, number 8413?"
    _cached(server, question, id_slot=0)
    in_slot_1 = _cached(server, question, id_slot=1, cache_prompt=True)  # the other slot never saw it
    in_slot_0 = _cached(server, question, id_slot=0)
    assert in_slot_0 > in_slot_1 + 10
    assert _cached(server, question, id_slot=-1) >= in_slot_0  # any slot: the one holding the prefix


@pytest.mark.parametrize("slot", [2, -2, 99])
def test_id_slot_out_of_range_is_400(server: Server, slot: int) -> None:
    assert_400_naming(server.post(CHAT_PATH, {**BASE[CHAT_PATH], "id_slot": slot}), "id_slot")


# -- real clients ----------------------------------------------------------------

def test_openai_sdk_chat_with_its_usual_fields(server: Server) -> None:
    client = server.client()
    r = client.chat.completions.create(
        model="gpt-4o", messages=CHAT, max_tokens=4, max_completion_tokens=4, temperature=0.7, top_p=0.9, n=1,
        presence_penalty=0.0, frequency_penalty=0.0, seed=1, stop=["\n\n"], user="u", store=False,
        metadata={"k": "v"}, service_tier="auto", parallel_tool_calls=False, logprobs=True, top_logprobs=2,
        response_format={"type": "text"}, prompt_cache_key="conversation-1", tool_choice="none")
    assert r.choices[0].message.content is not None
    assert r.model.endswith(".gguf")  # answered by the base model, under its own id
    stream = client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}, user="u")
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_sdk_completion_with_its_usual_fields(server: Server) -> None:
    r = server.client().completions.create(model="any", prompt="The sea is", max_tokens=4, best_of=1, echo=False,
                                           n=1, logprobs=2, user="u", temperature=0, stream=False)
    assert r.choices[0].text


def test_openai_sdk_bad_tools_raise_bad_request_naming_tools(server: Server) -> None:
    bad = {"type": "function", "function": {"name": "no spaces allowed", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(model="any", messages=CHAT, tools=[bad])
    assert caught.value.body["param"] == "tools"


@pytest.mark.parametrize("payload", [
    # LangChain's ChatOpenAI (n and stream always sent)
    {"model": "gpt-3.5-turbo", "stream": False, "n": 1, "temperature": 0.7},
    # Continue's OpenAI provider
    {"model": "m", "max_tokens": 4, "temperature": 0.2, "top_p": 0.9, "stop": ["```"], "stream": True},
    # Open WebUI, with an Ollama extra and llama-server's
    {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "keep_alive": "5m",
     "cache_prompt": True, "id_slot": -1, "metadata": None},
], ids=["langchain", "continue", "open-webui"])
def test_client_payloads_are_served(server: Server, payload: dict) -> None:
    r = server.post(CHAT_PATH, {"messages": CHAT, "max_tokens": 4, **payload})
    assert r.status_code == 200, r.text


def test_models_list_the_fields_taken(server: Server) -> None:
    models = server.client().models.list().data
    fields = models[0].model_extra["linalign"]["request_fields"]
    assert {"messages", "principle", "cache_prompt", "id_slot", "top_logprobs"} <= set(fields["chat"])
    assert {"prompt", "base_prompt", "logprobs"} <= set(fields["completions"])
    assert set(fields["accepted_without_effect"]) == set(HARMLESS_FIELDS)


def test_any_plain_model_id_is_the_base_model_and_an_unknown_preset_is_404(server: Server) -> None:
    r = server.post(CHAT_PATH, {**BASE[CHAT_PATH], "model": "no-such-model"})
    assert r.status_code == 200 and r.json()["model"] != "no-such-model"
    r = server.post(CHAT_PATH, {**BASE[CHAT_PATH], "model": f"{server.client().models.list().data[0].id}:typo"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
