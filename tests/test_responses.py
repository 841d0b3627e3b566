"""POST /v1/responses against a real in-process server: the official `openai` client's
`responses.create`, whole and streamed (its typed events, parsed by the client itself), the
same text as chat for the same conversation and seed, and bad inputs as 400s naming the field."""
from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.http.responses import LOGPROBS_INCLUDE
from tests.serving_fixtures import play_artifact
from tests.serving_live import LiveServer
from tests.test_abuse import FIELDS, hostile_text, json_values

# The tiny model's context is 32 characters: "Romeo.\nGood morrow.\n\nJuliet.\n" nearly fills it.
INPUT = [{"role": "user", "content": [{"type": "input_text", "text": "Good morrow."}]}]


@pytest.fixture(scope="module")
def live(tiny_run, tmp_path_factory):
    s = LiveServer(play_artifact(tiny_run, tmp_path_factory), max_new_tokens=512, max_batch=8)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(live):
    import openai
    return openai.OpenAI(base_url=f"{live.base}/v1", api_key="none-needed", max_retries=0)


def test_a_whole_response_is_chat_underneath(live, client):
    r = client.responses.create(model="m", input=INPUT, instructions="A public place.", max_output_tokens=24,
                                temperature=0.8, top_p=0.9, truncation="auto",
                                extra_body={"seed": 3, "ignore_eos": True})
    assert r.object == "response" and r.id.startswith("resp_") and r.store is False
    assert (r.status, r.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert (r.instructions, r.max_output_tokens, r.temperature, r.top_p) == ("A public place.", 24, 0.8, 0.9)
    [item] = r.output
    assert (item.type, item.role, item.status, item.content[0].type) == ("message", "assistant", "incomplete",
                                                                         "output_text")
    assert r.usage.output_tokens == 24 and r.usage.total_tokens == r.usage.input_tokens + 24
    chat = client.chat.completions.create(
        model="m", messages=[{"role": "system", "content": "A public place."},
                             {"role": "user", "content": "Good morrow."}],
        max_tokens=24, temperature=0.8, top_p=0.9, seed=3, extra_body={"ignore_eos": True, "truncate_prompt_tokens": -1})
    assert r.output_text == chat.choices[0].message.content and len(r.output_text) > 0
    assert r.usage.input_tokens == chat.usage.prompt_tokens == 32     # truncated to the context


def test_a_stream_is_typed_events_in_order(client):
    kinds, seqs, deltas = [], [], []
    with client.responses.create(model="m", input="Good morrow.", max_output_tokens=16, stream=True,
                                 extra_body={"seed": 5, "ignore_eos": True}) as stream:
        for ev in stream:
            kinds.append(ev.type)
            seqs.append(ev.sequence_number)
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
            last = ev
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(deltas) >= 1
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert seqs == list(range(len(seqs)))
    final = last.response
    assert final.output_text == "".join(deltas) and final.usage.output_tokens == 16
    whole = client.responses.create(model="m", input="Good morrow.", max_output_tokens=16,
                                    extra_body={"seed": 5, "ignore_eos": True})
    assert whole.output_text == final.output_text


def test_a_reply_that_ends_is_completed_and_logprobs_come_when_asked(client):
    r = client.responses.create(model="m", input="Good morrow.", max_output_tokens=200,
                                extra_body={"stop": ["a", "e", "o", " ", "\n"], "seed": 1})
    assert r.status == "completed" and r.incomplete_details is None and r.output[0].status == "completed"
    assert r.usage.output_tokens < 200
    r = client.responses.create(model="m", input="Good morrow.", max_output_tokens=8, temperature=0,
                                top_logprobs=2, include=["message.output_text.logprobs"],
                                extra_body={"min_tokens": 8})   # past chat's blank-line stop
    lps = r.output[0].content[0].logprobs
    assert len(lps) == 8 and "".join(lp.token for lp in lps) == r.output_text
    assert all(len(lp.top_logprobs) == 2 and lp.top_logprobs[0].logprob == lp.logprob for lp in lps)   # greedy


# ---- structured output and tools: chat's grammars under the Responses API's names ------------------
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0,
                                                                             "maximum": 120}}}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 8}}}}
LONG = {"truncation": "auto"}     # the tiny model's context is 32 tokens: keep the input's last ones


def test_text_format_json_schema_always_validates_and_parses(client):
    import pydantic

    for seed in range(6):
        r = client.responses.create(model="m", input="Who art thou?", max_output_tokens=200, temperature=1.0,
                                    text={"format": {"type": "json_schema", "name": "person", "schema": PERSON,
                                                     "strict": True}}, extra_body={"seed": seed})
        assert r.status == "completed", r.output_text
        jsonschema.validate(json.loads(r.output_text), PERSON)
        assert r.text.format.type == "json_schema"

    class Person(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=8)   # unbounded, this model's string could outrun max_output_tokens
        age: int
    parsed = client.responses.parse(model="m", input="Who art thou?", text_format=Person, max_output_tokens=200,
                                    extra_body={"seed": 1})
    assert isinstance(parsed.output_parsed, Person)
    streamed = "".join(ev.delta for ev in client.responses.create(
        model="m", input="Who art thou?", max_output_tokens=200, stream=True, text={"format": {"type": "json_object"}},
        extra_body={"seed": 2}) if ev.type == "response.output_text.delta")
    assert isinstance(json.loads(streamed), dict)


def test_a_function_call_round_trip(client):
    r = client.responses.create(model="m", input="What weather in Verona?", tools=[WEATHER], tool_choice="required",
                                parallel_tool_calls=False,
                                max_output_tokens=120, extra_body={"seed": 4, **LONG})
    (call,) = r.output
    assert (call.type, call.name, r.status) == ("function_call", "get_weather", "completed")
    assert call.call_id.startswith("call_") and r.tools[0].name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    answer = client.responses.create(model="m", tools=[WEATHER], tool_choice="none", max_output_tokens=20,
                                     input=[{"role": "user", "content": "What weather in Verona?"},
                                            {"type": "function_call", "call_id": call.call_id, "name": call.name,
                                             "arguments": call.arguments},
                                            {"type": "function_call_output", "call_id": call.call_id,
                                             "output": "Rain."}], extra_body={"seed": 1, **LONG})
    assert [o.type for o in answer.output] == ["message"]


def test_a_named_function_call_streamed(client):
    kinds, calls = [], []
    with client.responses.create(model="m", input="Weather?", tools=[WEATHER], max_output_tokens=120, stream=True,
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 extra_body={"seed": 3, **LONG}) as stream:
        for ev in stream:
            kinds.append(ev.type)
            if ev.type == "response.function_call_arguments.done":
                calls.append(ev.arguments)
            last = ev
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds[2:6] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done", "response.output_item.done"]
    assert [o.type for o in last.response.output] == ["function_call"] and len(calls) == 1
    jsonschema.validate(json.loads(calls[0]), WEATHER["parameters"])


@pytest.mark.parametrize("body, param", [
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation"),
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": 3}, "input"),
    ({"input": [{"role": "narrator", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": "  "}]}, "input[0].content"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "max_output_tokens": "many"}, "max_output_tokens"),
    ({"input": "hi", "temperature": -1}, "temperature"),
    ({"input": "hi", "top_p": 2}, "top_p"),
    ({"input": "hi", "top_logprobs": 9}, "top_logprobs"),
    ({"input": "hi", "instructions": 7}, "instructions"),
    ({"input": "hi", "truncation": "sometimes"}, "truncation"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": 3}}}, "text.format.schema"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "hi", "tools": [{"type": "function", "name": "a b"}]}, "tools[0].name"),
    ({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": 3}]}, "tools[0].parameters"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
    ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{"}]}, "input[0].arguments"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, "input[0].call_id"),
    ({"input": "x" * 5000}, "input"),
])
def test_bad_input_is_a_400_naming_the_field(http, body, param):
    r = http.post("/v1/responses", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert r.json()["error"]["message"]


# ---- any field, any type: never a 5xx (as tests/test_abuse.py does for completions and chat) ----
item = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "narrator"]),
     "content": st.sampled_from(["Good morrow.", "", "  "]) | hostile_text |
     st.lists(st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text", "input_image"]),
                                     "text": hostile_text}), max_size=2)},
    optional={"type": st.sampled_from(["message", "function_call", "reasoning"])})
RESPONSE_FIELDS = {
    **{k: v for k, v in FIELDS.items() if k in ("temperature", "top_p", "top_k", "seed", "stop", "stream",
                                               "ignore_eos", "presence_penalty", "user", "model")},
    "input": st.sampled_from(["Good morrow.", "", "x" * 40]) | hostile_text | st.lists(item | json_values(),
                                                                                        max_size=3),
    "instructions": st.sampled_from(["A.", ""]) | hostile_text,
    "max_output_tokens": st.integers(-3, 30), "top_logprobs": st.integers(-1, 7),
    "include": st.lists(st.sampled_from([LOGPROBS_INCLUDE, "reasoning.encrypted_content"]), max_size=2),
    "truncation": st.sampled_from(["auto", "disabled", "x"]), "store": st.booleans(),
    "previous_response_id": st.sampled_from(["", "resp_1"]),
    "text": st.fixed_dictionaries({"format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json", "json_object", "json_schema"])},
        optional={"schema": st.just(PERSON) | json_values(), "name": st.text(max_size=3)})}),
    "tools": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search"]),
                                             "name": st.sampled_from(["f", "a b", ""])},
                                            optional={"parameters": st.just(PERSON) | json_values()}), max_size=2),
    "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "name": "f"}]),
    "parallel_tool_calls": st.booleans(),
    "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)}
RESPONSE_VALID = {"input": "Good morrow.", "max_output_tokens": 4}
response_bodies = st.sampled_from(sorted(RESPONSE_FIELDS)).flatmap(
    lambda name: (RESPONSE_FIELDS[name] | json_values()).map(lambda value: {**RESPONSE_VALID, name: value})) | \
    st.fixed_dictionaries({}, optional={k: v | json_values() for k, v in RESPONSE_FIELDS.items()}) | json_values()


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=response_bodies)
def test_any_field_any_type_is_never_a_5xx(live, http, body):
    r = http.post("/v1/responses", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.status_code in (400, 413) and r.json()["error"]["type"] == "invalid_request_error"
    elif r.headers["content-type"].startswith("text/event-stream"):
        events = [json.loads(ln[len("data: "):]) for ln in r.text.splitlines() if ln.startswith("data: ")]
        assert events[-1]["type"] in ("response.completed", "response.incomplete")
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
    else:
        assert r.json()["object"] == "response"


def test_after_all_that_it_still_serves(live, http):
    assert live.metric("shelley_requests_total", rpc="POST /v1/responses", code="500") == 0
    assert http.post("/v1/responses", json=RESPONSE_VALID).json()["usage"]["output_tokens"] >= 1
