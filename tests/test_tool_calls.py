"""Tool calling in OpenAI's shape (docs/tools.md): requests checked, calls
constrained by their functions' schemas, read back out of the answer, and
the whole flow through the official openai client against linalign serve."""
from __future__ import annotations

import json
from typing import Iterator

import jsonschema
import openai
import pytest

import linalign
from conftest import load_model_writer
from linalign.synthetic_model import TOOL_TEMPLATES
from linalign.tool_calls import ToolCallStream, ToolRequestError, format_of_template, parse_tool_calls, plan_tool_calls
from test_server import Server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "hour24": {"type": "boolean"}},
                   "required": ["city"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
# For the tiny random models: closed values only. Their byte tokens can spell
# invalid UTF-8 inside a free string, which llama.cpp's grammar lets through
# (it reads a lead byte's continuation bytes without checking them).
TINY_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "parameters": {"type": "object", "properties": {"hour24": {"type": "boolean"}},
                                           "required": ["hour24"], "additionalProperties": False}}}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
TINY_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TINY_TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def assert_valid_calls(calls, schemas=SCHEMAS) -> None:
    """Every call names a declared function and its arguments validate."""
    assert calls
    for call in calls:
        call = call if isinstance(call, dict) else call.model_dump()
        assert call["type"] == "function" and call["id"]
        arguments = json.loads(call["function"]["arguments"])
        jsonschema.validate(arguments, schemas[call["function"]["name"]])


def tool_result_messages(message: dict) -> list[dict]:
    """The assistant's calls and one result per call, as a client sends them back."""
    calls = message["tool_calls"]
    return [{"role": "assistant", "content": message.get("content"), "tool_calls": calls},
            *({"role": "tool", "tool_call_id": c["id"], "content": json.dumps({"temperature": 21})} for c in calls)]


# -- reading calls back ------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "text", "content", "names"), [
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call>', "", ["get_time"]),
    ("hermes", 'Let me look.\n<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
               '<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>', "Let me look.", ["a", "b"]),
    ("generic", '<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>', "", ["a"]),
    ("llama3", '{"name": "get_time", "parameters": {"city": "Oslo"}}', "", ["get_time"]),
    ("llama3", '<|python_tag|>{"name": "get_time", "parameters": {}}', "", ["get_time"]),
    ("hermes", "No call here, though I mention <tool_call> tags.", "No call here, though I mention <tool_call> tags.",
     []),
    ("llama3", 'It is {"name": "x"} in prose.', 'It is {"name": "x"} in prose.', []),
    # the last call cut short by max_tokens: the complete ones stand
    ("hermes", '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "argu', "", ["a"]),
])
def test_calls_are_parsed_in_each_format(fmt: str, text: str, content: str, names: list[str]) -> None:
    parsed = parse_tool_calls(text, fmt)
    assert parsed.content == content
    assert [c["function"]["name"] for c in parsed.tool_calls] == names
    for call in parsed.tool_calls:
        assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_a_stream_holds_back_a_call_split_across_deltas() -> None:
    stream = ToolCallStream("hermes")
    sent = [stream.push(d) for d in ["Sure", ". <tool", "_call>\n{\"name\": \"a\", ", "\"arguments\": {}}", "</tool_call>"]]
    assert "".join(sent) == "Sure. "
    rest, calls = stream.finish()
    assert rest == "" and [c["function"]["name"] for c in calls] == ["a"]


def test_a_stream_of_prose_is_sent_whole() -> None:
    stream = ToolCallStream("hermes")
    sent = "".join(stream.push(d) for d in ["a <", "b> c <tool", "s"])
    rest, calls = stream.finish()
    assert sent + rest == "a <b> c <tools" and calls == []


@pytest.mark.parametrize(("template", "fmt"), [
    (None, "generic"), ("{{ messages }}", "generic"),
    ("{% if tools %}<tool_call>{% endif %}", "hermes"),
    ("{% if tools %}<|python_tag|>{% endif %}", "llama3"),
])
def test_the_format_follows_the_template(template, fmt) -> None:
    assert format_of_template(template) == fmt


# -- bad requests ----------------------------------------------------------------------

@pytest.mark.parametrize(("tools", "choice", "messages", "param"), [
    ([{"type": "function", "function": {"name": "has space"}}], None, ASK, "tools"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], None, ASK, "tools"),
    ([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"s": {"type": "string", "maxLength": 10**9}}}}}], None, ASK, "tools"),
    ([WEATHER, WEATHER], None, ASK, "tools"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, ASK, "tool_choice"),
    (TOOLS, "sometimes", ASK, "tool_choice"),
    ([], "required", ASK, "tool_choice"),
    (TOOLS, None, ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "1"}], "messages"),
    (TOOLS, None, ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{not json"}}]}], "messages"),
])
def test_bad_tool_requests_name_their_field(tools, choice, messages, param) -> None:
    with pytest.raises(ToolRequestError) as caught:
        plan_tool_calls(None, messages, tools, choice)
    assert caught.value.param == param


# -- tool-aware templates (tiny GGUFs) ------------------------------------------------

@pytest.fixture(scope="module", params=["qwen2.5", "llama3.1"])
def tiny_tool_aligner(request, tmp_path_factory) -> Iterator[linalign.Aligner]:
    spec_module = __import__("importlib").util.spec_from_file_location(
        "make_tiny_gguf", __import__("pathlib").Path(__file__).parent.parent / "models" / "make_tiny_gguf.py")
    module = __import__("importlib").util.module_from_spec(spec_module)
    spec_module.loader.exec_module(module)
    path = load_model_writer()(tmp_path_factory.mktemp("tools") / f"{request.param}.gguf", seed=5,
                               chat_template=module.TOOL_TEMPLATES[request.param])
    with linalign.Aligner(path, n_ctx=2048, n_threads=2, seed=0) as aligner:
        aligner.tool_template = request.param
        yield aligner


def test_the_template_gets_the_tools_and_arguments_as_objects(tiny_tool_aligner) -> None:
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                      "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21 C"}]
    request = tiny_tool_aligner.chat_request(history, tools=TOOLS)
    prompt = tiny_tool_aligner.detokenize(request.prompt)
    assert '"name": "get_time"' in prompt  # the tools, rendered by the template itself
    assert '{"city": "Paris", "unit": "celsius"}' in prompt  # tojson of an object, not of a string
    assert '\\"city\\"' not in prompt
    assert "21 C" in prompt


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_a_forced_call_in_the_templates_own_format_parses_and_validates(tiny_tool_aligner, choice) -> None:
    r = tiny_tool_aligner.create_chat_completion(ASK, tools=TINY_TOOLS, tool_choice=choice, parallel_tool_calls=False,
                                                 max_tokens=300, seed=3)
    choice_ = r["choices"][0]
    assert choice_["finish_reason"] == "tool_calls", choice_
    assert_valid_calls(choice_["message"]["tool_calls"], TINY_SCHEMAS)
    if isinstance(choice, dict):
        assert choice_["message"]["tool_calls"][0]["function"]["name"] == "get_time"


# -- the default model (generic form) --------------------------------------------------

def test_a_lazy_grammar_constrains_only_from_its_trigger(aligner) -> None:
    """A grammar with a trigger leaves the text before it alone, and
    constrains it from the trigger on (what tool_choice "auto" relies on)."""
    plain = aligner.create_chat_completion(ASK, temperature=0, ratio=0, max_tokens=12)["choices"][0]["message"]
    words = plain["content"].split()
    assert len(words) >= 3
    trigger = words[2]
    lazy = aligner.create_chat_completion(ASK, temperature=0, ratio=0, max_tokens=40,
                                          grammar=f'root ::= {json.dumps(trigger)} " FORCED"',
                                          grammar_triggers=[trigger])["choices"][0]
    head = plain["content"][:plain["content"].index(trigger)]
    assert lazy["message"]["content"] == head + trigger + " FORCED"
    assert lazy["finish_reason"] == "stop"


@pytest.mark.parametrize("align_tool_calls", [False, True])
@pytest.mark.parametrize("ratio", [0, 2, 8])
def test_every_generated_call_validates_at_any_ratio(aligner, ratio, align_tool_calls) -> None:
    for seed in range(2):
        r = aligner.create_chat_completion(ASK, tools=TOOLS, tool_choice="required", principle="Answer in French.",
                                           ratio=ratio, align_tool_calls=align_tool_calls, max_tokens=100,
                                           seed=seed, parallel_tool_calls=False)
        assert r["choices"][0]["finish_reason"] == "tool_calls"
        assert_valid_calls(r["choices"][0]["message"]["tool_calls"])
        # off by default inside the call: the whole answer is the call, so no step was steered
        assert (r["linalign"]["mean_ratio"] == 0) == (not align_tool_calls or ratio == 0)


def test_auto_answers_in_prose_or_with_valid_calls(aligner) -> None:
    for seed in range(3):
        r = aligner.create_chat_completion(ASK, tools=TOOLS, tool_choice="auto", max_tokens=120, seed=seed)
        message = r["choices"][0]["message"]
        if r["choices"][0]["finish_reason"] == "tool_calls":
            assert_valid_calls(message["tool_calls"])
        else:
            assert message["content"] and "tool_calls" not in message


# -- end to end: the openai client against linalign serve ----------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server("--parallel", "1", "--n-ctx", "2048")
    yield srv
    srv.stop()


def _stream_message(stream) -> tuple[dict, str]:
    """A streamed answer put together as a client does it: content, and the
    tool_calls deltas merged by index."""
    content, calls, reason = "", {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or ():
            call = calls.setdefault(delta.index, {"id": None, "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
            call["id"] = delta.id or call["id"]
            call["function"]["name"] += delta.function.name or ""
            call["function"]["arguments"] += delta.function.arguments or ""
        reason = choice.finish_reason or reason
    message = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, reason


def _answer(client, stream: bool, **kw) -> tuple[dict, str]:
    """One chat completion, streamed or not: the message as a dict and the finish reason."""
    if stream:
        return _stream_message(client.chat.completions.create(stream=True, **kw))
    r = client.chat.completions.create(**kw)
    return r.choices[0].message.model_dump(exclude_none=True), r.choices[0].finish_reason


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_openai_client_call_result_answer(server: Server, stream: bool, choice) -> None:
    client = server.client()
    kw = dict(model="any", tools=TOOLS, tool_choice=choice, parallel_tool_calls=False, max_tokens=120, seed=1,
              extra_body={"principle": "Be brief."})
    message, reason = _answer(client, stream, messages=ASK, **kw)
    assert reason == "tool_calls"
    assert_valid_calls(message["tool_calls"])
    if isinstance(choice, dict):
        assert message["tool_calls"][0]["function"]["name"] == "get_weather"
    follow = ASK + tool_result_messages(message)
    answer, reason = _answer(client, stream, model="any", messages=follow, tools=TOOLS, max_tokens=40, seed=1)
    assert reason in ("stop", "length", "tool_calls")
    assert answer.get("content") or answer.get("tool_calls")


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_two_parallel_calls(server: Server, stream: bool) -> None:
    client = server.client()
    ask = [{"role": "user", "content": "What are the weather and the time in Paris and in Rome?"}]
    kw = dict(model="any", messages=ask, tools=TOOLS, tool_choice="required", parallel_tool_calls=True,
              max_tokens=200, temperature=0)
    if stream:
        message, _ = _stream_message(client.chat.completions.create(stream=True, **kw))
    else:
        message = client.chat.completions.create(**kw).choices[0].message.model_dump(exclude_none=True)
    assert len(message["tool_calls"]) >= 2
    assert len({c["id"] for c in message["tool_calls"]}) == len(message["tool_calls"])
    assert_valid_calls(message["tool_calls"])
    final = client.chat.completions.create(model="any", messages=ask + tool_result_messages(message), tools=TOOLS,
                                           tool_choice="none", max_tokens=30)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_openai_client_auto_is_prose_or_valid_calls(server: Server) -> None:
    r = server.client().chat.completions.create(model="any", messages=ASK, tools=TOOLS, tool_choice="auto",
                                                max_tokens=80, seed=2)
    if r.choices[0].finish_reason == "tool_calls":
        assert_valid_calls(r.choices[0].message.tool_calls)
    else:
        assert r.choices[0].message.content


# -- tool_choice "auto" with a model that opens a call by itself --------------------------
# The default model never writes "<tool_call>" unasked, so "auto" is shown
# making a call with a synthetic model that does: a tiny random GGUF with
# Qwen 2.5's template, "<tool_call>" in its vocabulary and weights that make
# greedy decoding pick that token wherever it may (write_tiny_gguf's
# favoured_token). Nothing in linalign knows: the lazy grammar starts at the
# token the model chose, and the call is read back out of the answer.

@pytest.fixture(scope="module")
def calling_model(tmp_path_factory):
    return load_model_writer()(tmp_path_factory.mktemp("calling") / "calling.gguf", seed=5,
                               chat_template=TOOL_TEMPLATES["qwen2.5"], favoured_token="<tool_call>")


def test_auto_is_a_call_exactly_when_the_model_opens_one(calling_model) -> None:
    with linalign.Aligner(calling_model, n_ctx=2048, n_threads=2, seed=0) as aligner:
        auto = aligner.create_chat_completion(ASK, tools=TINY_TOOLS, tool_choice="auto", parallel_tool_calls=False,
                                              max_tokens=300, seed=1, principle="Be brief.")["choices"][0]
        assert auto["finish_reason"] == "tool_calls", auto
        assert auto["message"]["content"] is None
        assert_valid_calls(auto["message"]["tool_calls"], TINY_SCHEMAS)
        # the same model without the call's grammar: the opening is text, nothing parses it
        none = aligner.create_chat_completion(ASK, tools=TINY_TOOLS, tool_choice="none", max_tokens=8,
                                              seed=1)["choices"][0]
        assert none["message"]["content"].startswith("<tool_call>") and "tool_calls" not in none["message"]


@pytest.fixture(scope="module")
def calling_server(calling_model) -> Iterator[Server]:
    srv = Server("--model", str(calling_model), "--parallel", "1", "--n-ctx", "2048")
    yield srv
    srv.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_auto_call_result_answer(calling_server: Server, stream: bool) -> None:
    client = calling_server.client()
    kw = dict(model="any", tools=TINY_TOOLS, tool_choice="auto", parallel_tool_calls=False, max_tokens=300, seed=1,
              extra_body={"principle": "Be brief."})
    message, reason = _answer(client, stream, messages=ASK, **kw)
    assert reason == "tool_calls", message
    assert not message.get("content")
    assert_valid_calls(message["tool_calls"], TINY_SCHEMAS)
    follow = ASK + tool_result_messages(message)
    answer, reason = _answer(client, stream, model="any", messages=follow, tools=TINY_TOOLS, tool_choice="none",
                             max_tokens=6, seed=1)
    assert reason == "length" and answer["content"] and "tool_calls" not in answer


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "s": {"type": "string", "pattern": "^(a?){0,200}$"}}}}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "unknown"}}}, "tool_choice"),
    ({"tools": TOOLS, "messages": ASK + [{"role": "tool", "tool_call_id": "nope", "content": "1"}]}, "messages"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}, "tool_choice": "required"}, "tools"),
    ({"functions": [{"name": "f"}]}, "functions"),
])
def test_bad_tool_input_is_400_with_param(server: Server, body: dict, param: str) -> None:
    r = server.post("/v1/chat/completions", {"messages": ASK, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
