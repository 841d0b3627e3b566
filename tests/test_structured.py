"""Structured output (response_format) and tool calls against a real server on loopback,
through the official `openai` client and gRPC: every output parses and validates, bad
inputs are 400s naming the field."""
from __future__ import annotations

import json
import threading

import grpc
import jsonschema
import openai
import pytest

from serving.grpc.proto import pb
from tests.serving_fixtures import play_artifact
from tests.serving_live import LiveServer

SEEDS = range(16)
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "mood", "tags", "home"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "mood": {"enum": ["merry", "sad", None]},
                         "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
                         "home": {"type": "object", "additionalProperties": False, "required": ["city"],
                                  "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]{1,6}$"}}}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer", "minimum": 1,
                                                                                     "maximum": 7}}}}}
NOW = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {},
                                                                      "additionalProperties": False}}}
LONG = {"truncate_prompt_tokens": -1}   # the tiny model's context is 32 tokens: keep the chat's last ones


@pytest.fixture(scope="module")
def live(tiny_run, tmp_path_factory):
    s = LiveServer(play_artifact(tiny_run, tmp_path_factory), max_new_tokens=4096, max_batch=16)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.base + "/v1", api_key="unused", max_retries=0)


def chat(client, **kw):
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Who art thou?"}], **kw)


def test_json_schema_output_always_validates(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in SEEDS:
        r = chat(client, response_format=fmt, max_tokens=300, temperature=1.0, seed=seed)
        c = r.choices[0]
        assert c.finish_reason == "stop", c.message.content
        jsonschema.validate(json.loads(c.message.content), PERSON)


def test_json_object_and_completions(client):
    for seed in range(4):
        r = chat(client, response_format={"type": "json_object"}, max_tokens=400, seed=seed, n=2,
                 extra_body={"top_k": 20})
        for c in r.choices:
            if c.finish_reason == "stop":
                assert isinstance(json.loads(c.message.content), dict)
        r = client.completions.create(model="m", prompt="ROMEO:", max_tokens=300, seed=seed, extra_body={
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}})
        jsonschema.validate(json.loads(r.choices[0].text), PERSON)


def test_length_when_max_tokens_cuts(client):
    r = chat(client, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
             max_tokens=5, seed=0)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == '{"nam'   # 5 tokens of the char tokenizer


def test_regex_choice_grammar_extensions(client):
    for seed in range(6):
        r = client.completions.create(model="m", prompt="ROMEO:", max_tokens=20, seed=seed,
                                      extra_body={"response_format": {"type": "regex", "regex": "[0-9]{3}-[a-z]{2}"}})
        assert r.choices[0].finish_reason == "stop"
        assert len(r.choices[0].text) == 6 and r.choices[0].text[3] == "-"
        r = chat(client, max_tokens=20, seed=seed, response_format={"type": "choice", "choice": ["aye", "nay", "anon"]})
        assert r.choices[0].message.content in ("aye", "nay", "anon")
        r = chat(client, max_tokens=20, seed=seed, response_format={
            "type": "grammar", "syntax": "gbnf", "grammar": 'root ::= ("ho" | "hey") "!"'})
        assert r.choices[0].message.content in ("ho!", "hey!")


def test_streamed_json_parses(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    parts = [ch.choices[0].delta.content or "" for ch in chat(client, response_format=fmt, max_tokens=300, seed=7,
                                                               stream=True)]
    jsonschema.validate(json.loads("".join(parts)), PERSON)


def test_grammar_trace_says_what_the_model_wanted_and_what_the_mask_allowed(live):
    """shelley_grammar_trace (the playground's structured mode): per token, the model's own
    top token before the mask and the token drawn under it; a model of plays wants other
    tokens than JSON's somewhere, and the mask always allows some."""
    import httpx

    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    body = {"prompt": "ROMEO:", "max_tokens": 60, "temperature": 0, "response_format": fmt, "logprobs": 1,
            "shelley_grammar_trace": True, "stream": True}
    steps, text, logprobs = [], "", []
    with httpx.stream("POST", live.base + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for c in json.loads(line[6:])["choices"]:
                    steps += c["shelley_grammar_trace"]
                    text += c["text"]
                    logprobs += c["logprobs"]["tokens"]
    assert text.startswith('{"name": "') and len(steps) == len(logprobs) >= 20
    assert [s["sampled"]["token"] for s in steps] == logprobs          # one entry per token sent
    assert all(s["allowed_tokens"] > 0 and s["allowed_logprob"] <= 1e-9 for s in steps)
    overruled = [s for s in steps if s["wanted"]["token_id"] != s["sampled"]["token_id"]]
    assert overruled and all(not s["wanted"]["allowed"] for s in overruled)   # greedy: only the mask overrules
    assert all(s["wanted"]["logprob"] >= s["sampled"]["logprob"] for s in steps)
    assert steps[0]["sampled"]["token"] == "{" and steps[0]["allowed_tokens"] == 1   # the schema's only start
    assert all(len(s["allowed_top"]) == min(5, s["allowed_tokens"]) for s in steps)
    assert all(s["allowed_top"][0]["token_id"] == s["sampled"]["token_id"] for s in steps)   # greedy: the best allowed

    chat = httpx.post(live.base + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Who art thou?"}], "max_tokens": 30, "seed": 1,
        "response_format": fmt, "shelley_grammar_trace": True}).json()["choices"][0]
    assert len(chat["shelley_grammar_trace"]) == 30 and chat["finish_reason"] == "length"
    assert "".join(s["sampled"]["token"] for s in chat["shelley_grammar_trace"]) == chat["message"]["content"]
    plain = httpx.post(live.base + "/v1/completions", timeout=60, json={"prompt": "ROMEO:", "max_tokens": 3}).json()
    assert "shelley_grammar_trace" not in plain["choices"][0]           # unasked: no field
    bad = httpx.post(live.base + "/v1/completions", timeout=60, json={"prompt": "x", "shelley_grammar_trace": 1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "shelley_grammar_trace"


def test_grpc_grammar_trace_is_https(live):
    """GenerateRequest.grammar_trace: the same steps as HTTP's shelley_grammar_trace."""
    import httpx

    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    http = httpx.post(live.base + "/v1/completions", timeout=60, json={
        "prompt": "ROMEO:", "max_tokens": 40, "temperature": 0, "response_format": fmt,
        "shelley_grammar_trace": True}).json()["choices"][0]["shelley_grammar_trace"]
    request = pb.GenerateRequest(prompt="ROMEO:", max_tokens=40, temperature=0, grammar_trace=True,
                                 response_format=pb.ResponseFormat(type="json_schema", json_schema=json.dumps(PERSON)))
    whole = live.stub.Complete(request, timeout=60)
    streamed = [s for m in live.stub.Generate(request, timeout=60) for s in m.grammar_trace]
    assert len(whole.grammar_trace) == len(whole.token_ids) == len(streamed) == len(http) == 40
    for w, s, h in zip(whole.grammar_trace, streamed, http):
        assert w == s
        assert (w.sampled.token_id, w.wanted.token_id, w.wanted_allowed, w.allowed_tokens) == \
            (h["sampled"]["token_id"], h["wanted"]["token_id"], h["wanted"]["allowed"], h["allowed_tokens"])
        assert abs(w.wanted.logprob - h["wanted"]["logprob"]) < 1e-5
        assert [a.token_id for a in w.allowed_top] == [a["token_id"] for a in h["allowed_top"]]
    assert any(not w.wanted_allowed for w in whole.grammar_trace)
    plain = live.stub.Complete(pb.GenerateRequest(prompt="ROMEO:", max_tokens=3, grammar_trace=True), timeout=60)
    assert not plain.grammar_trace                                       # no grammar: nothing to trace


def test_plain_rows_unchanged_beside_structured(client):
    """A seeded plain request gives the same tokens alone and in a batch with constrained rows."""
    def plain():
        return client.completions.create(model="m", prompt="ROMEO:", max_tokens=40, seed=11, temperature=1.0).choices[0].text
    alone = plain()
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    threads = [threading.Thread(target=chat, args=(client,), kwargs={"response_format": fmt, "max_tokens": 200, "seed": i})
               for i in range(4)]
    for t in threads:
        t.start()
    beside = plain()
    for t in threads:
        t.join()
    assert beside == alone


@pytest.mark.parametrize("fmt, param", [
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "banana"}}}, "response_format"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "array", "uniqueItems": True}}},
     "response_format"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": "a string"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "p"}}, "response_format.json_schema"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "regex", "regex": "(?=a)b"}, "response_format"),
    ({"type": "choice", "choice": []}, "response_format.choice"),
    ("json", "response_format.type"),
])
def test_bad_response_format_is_400_naming_the_field(client, fmt, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, response_format=fmt)
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
    if "uniqueItems" in json.dumps(fmt):
        assert "uniqueItems" in e.value.body["message"]


def test_grpc_response_format(live):
    schema = json.dumps(PERSON)
    for seed in range(4):
        r = live.stub.Complete(pb.GenerateRequest(prompt="ROMEO:", max_tokens=300, seed=seed, response_format=pb.ResponseFormat(
            type="json_schema", json_schema=schema)), timeout=60)
        assert r.finish_reason == "stop"
        jsonschema.validate(json.loads(r.text), PERSON)
    r = live.stub.Complete(pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="Hi")], max_tokens=20,
                                              response_format=pb.ResponseFormat(type="choice", choice=["yes", "no"])))
    assert r.text in ("yes", "no")
    with pytest.raises(grpc.RpcError) as e:
        live.stub.Complete(pb.GenerateRequest(prompt="x", response_format=pb.ResponseFormat(
            type="json_schema", json_schema='{"not": {"type": "string"}}')), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not" in e.value.details()


# ---- tool calls -------------------------------------------------------------------------------

def test_required_tool_call_round_trip(client):
    for seed in range(6):
        r = chat(client, tools=[WEATHER, NOW], tool_choice="required", parallel_tool_calls=False, max_tokens=120,
                 seed=seed, extra_body=LONG)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c.message
        (call,) = c.message.tool_calls
        assert call.id.startswith("call_") and call.function.name in ("get_weather", "now")
        schema = (WEATHER if call.function.name == "get_weather" else NOW)["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), schema)
    messages = [{"role": "user", "content": "What weather in Verona?"}, c.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "Rain, and more rain."}]
    r = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER, NOW], tool_choice="none",
                                       max_tokens=20, seed=1, extra_body=LONG)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content is not None


def test_named_tool_call_streamed(client):
    stream = chat(client, tools=[WEATHER, NOW], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                  max_tokens=120, seed=3, stream=True, extra_body=LONG)
    calls, finish = {}, None
    for ch in stream:
        d = ch.choices[0].delta
        for tc in d.tool_calls or []:
            entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0] and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


def test_auto_lets_the_model_choose(client):
    for seed in range(4):
        c = chat(client, tools=[WEATHER], max_tokens=40, seed=seed, extra_body=LONG).choices[0]
        if c.message.tool_calls:
            assert c.finish_reason == "tool_calls"
            jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments), WEATHER["function"]["parameters"])
        else:
            assert not (c.message.content or "").startswith("[")


def test_the_template_renders_calls_and_answers(live, http):
    r = http.post("/tokenize", json={"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Verona"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Rain."}]})
    prompt = r.json()["prompt"]
    assert '[call get_weather {"city": "Verona"}]\n\n[get_weather answers: Rain.]\n\n' in prompt


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": "get_weather"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}],
      "tool_choice": "required"}, "tools[0].function.parameters"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "tool_call_id": "x", "content": "hi"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "1"}]}]}, "messages[0].tool_calls[0]"),
])
def test_bad_tools_are_400_naming_the_field(client, extra, param):
    body = {"messages": [{"role": "user", "content": "Hi"}], **extra}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", **body)
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
