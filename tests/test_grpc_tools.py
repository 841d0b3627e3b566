"""Tool calls over gRPC, against a real server on loopback: tools and tool_choice in
GenerateRequest, calls in Generate's messages and Complete's reply, a call answered back
into the conversation, and bad tools or tool_choice as INVALID_ARGUMENT naming the field
(the same reader as HTTP's: serving/tools.py)."""
from __future__ import annotations

import json

import grpc
import jsonschema
import pytest

from serving.grpc.proto import pb
from tests.serving_fixtures import play_artifact
from tests.serving_live import LiveServer

CITY = {"type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer", "minimum": 1,
                                                                          "maximum": 7}}}
WEATHER = pb.Tool(function=pb.FunctionSpec(name="get_weather", description="The weather in a city",
                                           parameters=json.dumps(CITY)))
NOW = pb.Tool(function=pb.FunctionSpec(name="now", parameters='{"type": "object", "additionalProperties": false}'))
ASK = [pb.ChatMessage(role="user", content="What weather in Verona?")]


@pytest.fixture(scope="module")
def live(tiny_run, tmp_path_factory):
    s = LiveServer(play_artifact(tiny_run, tmp_path_factory), max_new_tokens=4096, max_batch=8)
    yield s
    s.close()


def request(**kw) -> pb.GenerateRequest:
    return pb.GenerateRequest(**{"messages": ASK, "max_tokens": 120, "truncate_prompt_tokens": -1, **kw})


def test_required_call_complete_and_answered_back(live):
    for seed in range(4):
        r = live.stub.Complete(request(tools=[WEATHER, NOW], tool_choice=pb.ToolChoice(mode="required"),
                                       parallel_tool_calls=False, seed=seed), timeout=60)
        assert r.finish_reason == "tool_calls" and r.text == "", r
        (call,) = r.tool_calls
        assert call.id.startswith("call_") and call.index == 0 and call.function.name in ("get_weather", "now")
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, CITY if call.function.name == "get_weather" else {"type": "object"})
    answered = [*ASK, pb.ChatMessage(role="assistant", tool_calls=[call]),
                pb.ChatMessage(role="tool", tool_call_id=call.id, content="Rain, and more rain.")]
    view = live.stub.Tokenize(pb.TokenizeRequest(messages=answered))
    assert f"[call {call.function.name} {call.function.arguments}]" in view.prompt
    assert f"[{call.function.name} answers: Rain, and more rain.]" in view.prompt
    r = live.stub.Complete(request(messages=answered, tools=[WEATHER, NOW], tool_choice=pb.ToolChoice(mode="none"),
                                   max_tokens=10, seed=1), timeout=60)
    assert not r.tool_calls and r.finish_reason in ("stop", "length")


def test_named_call_streamed_whole_when_its_line_ends(live):
    msgs = list(live.stub.Generate(request(tools=[WEATHER, NOW], tool_choice=pb.ToolChoice(function="get_weather"),
                                           seed=3), timeout=60))
    calls = [c for m in msgs for c in m.tool_calls]
    assert msgs[-1].finish_reason == "tool_calls" and msgs[-1].usage.completion_tokens > 5
    assert "".join(m.text for m in msgs) == ""                     # the call is not text
    (call,) = calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), CITY)
    assert sum(len(m.token_ids) for m in msgs) == msgs[-1].usage.completion_tokens   # tokens still flow


def test_auto_and_n_choices(live):
    r = live.stub.Complete(request(tools=[WEATHER], n=3, seed=5, max_tokens=40), timeout=60)
    assert len(r.choices) == 3
    for c in r.choices:
        if c.tool_calls:
            assert c.finish_reason == "tool_calls" and c.text == ""
            jsonschema.validate(json.loads(c.tool_calls[0].function.arguments), CITY)
        else:
            assert not c.text.startswith("[") and c.finish_reason in ("stop", "length")
    plain = live.stub.Complete(request(max_tokens=8, seed=5), timeout=60)      # no tools: as before
    assert not plain.tool_calls and plain.finish_reason in ("stop", "length")


@pytest.mark.parametrize("kw, field", [
    ({"tools": [WEATHER], "tool_choice": pb.ToolChoice(mode="sometimes")}, "tool_choice.mode"),
    ({"tools": [WEATHER], "tool_choice": pb.ToolChoice(function="nope")}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": pb.ToolChoice(mode="required", function="get_weather")}, "tool_choice"),
    ({"tool_choice": pb.ToolChoice(mode="required")}, "tool_choice"),
    ({"tools": [pb.Tool(function=pb.FunctionSpec(description="no name"))]}, "tools[0].function.name"),
    ({"tools": [pb.Tool(function=pb.FunctionSpec(name="f", parameters="{not json"))]}, "tools[0].function.parameters"),
    ({"tools": [pb.Tool(function=pb.FunctionSpec(name="f", parameters='{"type": "object", "not": {}}'))],
      "tool_choice": pb.ToolChoice(mode="required")}, "tools[0].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"messages": [], "prompt": "ROMEO:", "tools": [WEATHER]}, "tools"),
    ({"messages": [pb.ChatMessage(role="tool", tool_call_id="x", content="hi")]}, "messages[0].tool_call_id"),
    ({"messages": [pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="1", function=pb.FunctionCall(
        name="f", arguments="{no"))])]}, "messages[0].tool_calls[0].function.arguments"),
])
def test_bad_tools_are_invalid_argument_naming_the_field(live, kw, field):
    with pytest.raises(grpc.RpcError) as e:
        live.stub.Complete(request(**kw), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.value.details(), e.value.details()
