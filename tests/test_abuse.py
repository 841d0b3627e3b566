"""The worst a client can send, against a real server on loopback: every request gets a 4xx
(HTTP, in OpenAI's error shape) or INVALID_ARGUMENT (gRPC) that names the problem, never a
500 or a dropped connection, and the server goes on serving. First the cases a new user's
abuse test found, one by one; then the same as a property (hypothesis): random values of
random JSON types in every request field of both APIs."""
from __future__ import annotations

import json
import math
import socket

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.http.app import MAX_BODY_BYTES
from serving.grpc.proto import pb
from tests.serving_live import LiveServer

MAX_NEW = 24
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def live(art):
    s = LiveServer(art, max_new_tokens=MAX_NEW, max_batch=8)
    yield s
    for route in ("POST /v1/completions", "POST /v1/chat/completions", "POST /tokenize", "POST /detokenize"):
        assert s.metric("shelley_requests_total", rpc=route, code="500") == 0
    s.close()


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def still_serves(live, http) -> None:
    r = http.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert live.generate(prompt="ROMEO:", max_tokens=2, ignore_eos=True)[2].usage.completion_tokens == 2
    assert live.health_of() == "SERVING"


# ---- the four reported cases, one by one ----------------------------------------------------

@pytest.mark.parametrize("field,body", [
    ("prompt", '{"prompt": "\\ud800", "max_tokens": 2}'),
    ("prompt", '{"prompt": "ok \\udfff then", "max_tokens": 2}'),
    ("stop", '{"prompt": "hi", "max_tokens": 2, "stop": ["\\ud83d"]}'),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(live, http, field, body):
    r = http.post("/v1/completions", content=body, headers=JSON)
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == field and "lone surrogate" in err["message"], err
    still_serves(live, http)


def test_a_body_nested_100000_deep_is_a_400(live, http):
    r = http.post("/v1/completions", content="[" * 100_000 + "]" * 100_000, headers=JSON)
    assert r.status_code == 400 and "nested too deeply" in error_of(r)["message"]
    r = http.post("/v1/completions", content='{"prompt": ' + "[" * 50_000 + "]" * 50_000 + "}", headers=JSON)
    assert r.status_code == 400
    still_serves(live, http)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_5mb_body_gets_a_413_naming_the_limit(live, http, chunked):
    payload = json.dumps({"prompt": "x" * (5 << 20)}).encode()
    content = (payload[i:i + 65536] for i in range(0, len(payload), 65536)) if chunked else payload
    r = http.post("/v1/completions", content=content, headers=JSON)
    err = error_of(r)
    assert r.status_code == 413 and err["code"] == "request_too_large", err
    assert str(MAX_BODY_BYTES) in err["message"] and err["type"] == "invalid_request_error"
    still_serves(live, http)


def test_the_413_comes_before_the_server_stops_reading(live):
    """On a raw socket: the answer arrives before a byte of the body is sent, and sending the
    body afterwards ends in an orderly close, not a reset."""
    size = 5 << 20
    with socket.create_connection(("127.0.0.1", live.http_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % size)
        answer = sock.recv(65536)
        while b"\r\n\r\n" not in answer or b"request_too_large" not in answer:
            part = sock.recv(65536)
            assert part, answer
            answer += part
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while part := sock.recv(65536):   # a reset would raise ConnectionResetError here
            rest += part


def raw_call(live, method: str, data: bytes, streaming: bool):
    path = f"/shelley.v1.TextGeneration/{method}"
    make = live.channel.unary_stream if streaming else live.channel.unary_unary
    call = make(path, request_serializer=None, response_deserializer=None)
    return list(call(data, timeout=10)) if streaming else call(data, timeout=10)


@pytest.mark.parametrize("method,streaming", [("Generate", True), ("Complete", False), ("GetModelInfo", False)])
def test_undecodable_grpc_bytes_are_invalid_argument(live, http, method, streaming):
    bad_utf8 = b"\x0a\x02\xff\xfe"            # field 1 (prompt / nothing), 2 bytes that are not UTF-8
    truncated = b"\x0a\x20only a few bytes"   # a length that runs past the end
    for data in (bad_utf8 if method != "GetModelInfo" else truncated, truncated):
        with pytest.raises(grpc.RpcError) as e:
            raw_call(live, method, data, streaming)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        assert f"not a valid {method} message" in e.value.details()
    still_serves(live, http)


# ---- the property: random values of random types in every field -----------------------------

# Any code point, and lone surrogates (U+D800..U+DFFF: valid as JSON escapes), which
# hypothesis's characters() never draws, so they are drawn as code points.
hostile_text = st.lists(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=8).map("".join)


def json_values():
    """Any JSON value: big integers, NaN and infinities (Python's json reads them), strings
    with lone surrogates, nested lists and objects."""
    text = hostile_text
    scalars = st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70) | \
        st.floats(allow_nan=True, allow_infinity=True) | text
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) |
                        st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


# Plausible values too, so that many requests get through to the engine and generate.
FIELDS = {
    "prompt": st.sampled_from(["", "ROMEO:", "a" * 40, "naïve café 😀"]) | hostile_text,
    "max_tokens": st.integers(-3, MAX_NEW + 3),
    "temperature": st.floats(-1, 3) | st.sampled_from([0, 0.0, 1]),
    "top_p": st.floats(-0.5, 1.5),
    "top_k": st.integers(-2, 50) | st.just(2**63),
    "seed": st.integers(-2, 2**64),
    "stop": st.lists(hostile_text, max_size=9) | hostile_text,
    "logprobs": st.integers(-1, 7),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | json_values()}),
    "ignore_eos": st.booleans(),
    "n": st.integers(0, 3), "best_of": st.integers(0, 3), "echo": st.booleans(), "suffix": st.text(max_size=3),
    "presence_penalty": st.floats(-3, 3), "frequency_penalty": st.floats(-3, 3),
    "repetition_penalty": st.floats(-1, 3) | st.just(0),
    "logit_bias": st.dictionaries(st.text(max_size=4) | st.integers(-5, 400).map(str) | st.just("1" * 30),
                                  st.integers(-200, 200) | st.floats(allow_nan=True), max_size=3),
    "min_tokens": st.integers(-2, MAX_NEW + 2),
    "truncate_prompt_tokens": st.integers(-3, 40),
    "user": st.text(max_size=5), "model": st.text(max_size=5),
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "regex", "choice", "grammar", "x"])},
        optional={"json_schema": st.fixed_dictionaries({}, optional={"schema": json_values() | st.sampled_from(
                      [{"type": "object"}, {"type": "string", "maxLength": 3}, {"enum": [1, "a"]}])}),
                  "regex": hostile_text | st.just("[a-c]{1,3}"), "choice": st.lists(hostile_text, max_size=3),
                  "grammar": hostile_text | st.just('start: "a" | "b"'), "syntax": st.sampled_from(["lark", "gbnf", ""])}),
    "shelley_grammar_trace": st.booleans(),
}
TOOL = st.fixed_dictionaries({"type": st.sampled_from(["function", "x"]), "function": st.fixed_dictionaries(
    {}, optional={"name": st.sampled_from(["f", "g", "a b", ""]) | hostile_text, "description": hostile_text,
                  "parameters": json_values() | st.just({"type": "object", "properties": {"a": {"type": "integer"}}})})})
# Chat's own fields, on top of the shared ones (prompt and echo aside).
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "narrator", ""]),
     "content": st.sampled_from(["Good morrow.", "", "  "]) | hostile_text |
     st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": hostile_text}),
              max_size=2)},
    optional={"name": st.sampled_from(["Romeo", "a\nb", "x" * 70]) | hostile_text})
CHAT_FIELDS = {**{k: v for k, v in FIELDS.items() if k not in ("prompt", "echo", "logprobs", "best_of", "suffix")},
               "messages": st.lists(message | json_values(), max_size=3),
               "logprobs": st.booleans(), "top_logprobs": st.integers(-1, 7),
               "max_completion_tokens": st.integers(-3, MAX_NEW + 3),
               "chat_template_kwargs": st.dictionaries(st.sampled_from(["assistant_name", "user_name", "_x", "a b"]),
                                                       hostile_text, max_size=2),
               "tools": st.lists(TOOL | json_values(), max_size=2),
               "tool_choice": st.sampled_from(["auto", "none", "required", "x"]) | st.fixed_dictionaries(
                   {"type": st.just("function"), "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g"])})}),
               "parallel_tool_calls": st.booleans()}
CHAT_VALID = {"messages": [{"role": "user", "content": "Good morrow."}], "max_tokens": 4}
VALID = {"prompt": "ROMEO:", "max_tokens": 4}
# One field of a valid request changed (so the bad value is what the server meets), or any
# mix of fields, or any JSON value at all as the body.
one_field = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda name: (FIELDS[name] | json_values()).map(lambda value: {**VALID, name: value}))
bodies = one_field | st.fixed_dictionaries({}, optional={k: v | json_values() for k, v in FIELDS.items()}) | \
    json_values()


chat_bodies = st.sampled_from(sorted(CHAT_FIELDS)).flatmap(
    lambda name: (CHAT_FIELDS[name] | json_values()).map(lambda value: {**CHAT_VALID, name: value})) | \
    st.fixed_dictionaries({"messages": st.just(CHAT_VALID["messages"]) | CHAT_FIELDS["messages"]},
                          optional={k: v | json_values() for k, v in CHAT_FIELDS.items() if k != "messages"}) | \
    json_values()


def check_answer(r: httpx.Response, kind: str) -> None:
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.status_code in (400, 413, 429) and error_of(r)["type"] in ("invalid_request_error", "rate_limit_error")
    elif r.headers["content-type"].startswith("text/event-stream"):
        lines = [ln for ln in r.text.splitlines() if ln]
        assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    else:
        assert r.json()["object"] == kind


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
def test_http_any_field_any_type_is_never_a_5xx(live, http, body):
    check_answer(http.post("/v1/completions", content=json.dumps(body, allow_nan=True), headers=JSON),
                 "text_completion")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=chat_bodies)
def test_chat_any_field_any_type_is_never_a_5xx(live, http, body):
    check_answer(http.post("/v1/chat/completions", content=json.dumps(body, allow_nan=True), headers=JSON),
                 "chat.completion")


tokenize_bodies = st.fixed_dictionaries({}, optional={
    "prompt": FIELDS["prompt"] | json_values(), "messages": CHAT_FIELDS["messages"] | json_values(),
    "add_generation_prompt": st.booleans() | json_values(), "tokens": st.lists(st.integers(-5, 400)) | json_values(),
    "chat_template_kwargs": CHAT_FIELDS["chat_template_kwargs"] | json_values()}) | json_values()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=tokenize_bodies, route=st.sampled_from(["/tokenize", "/detokenize"]))
def test_tokenize_any_field_any_type_is_never_a_5xx(live, http, body, route):
    r = http.post(route, content=json.dumps(body, allow_nan=True), headers=JSON)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        error_of(r)
    else:
        assert set(r.json()) == ({"prompt"} if route == "/detokenize" else
                                 {"tokens", "count", "max_model_len", "token_strs", "prompt"})


float32s = st.floats(width=32, allow_nan=True, allow_infinity=True)
int32s = st.integers(-2**31, 2**31 - 1)
requests = st.builds(
    pb.GenerateRequest,
    prompt=st.text(max_size=40), max_tokens=st.none() | int32s | st.integers(0, MAX_NEW),
    temperature=st.none() | float32s, top_k=int32s, top_p=st.none() | float32s,
    seed=st.none() | st.integers(0, 2**64 - 1), stop=st.lists(st.text(max_size=70), max_size=10),
    ignore_eos=st.booleans(), logprobs=st.none() | int32s,
    presence_penalty=st.none() | float32s, frequency_penalty=st.none() | float32s,
    repetition_penalty=st.none() | float32s, logit_bias=st.dictionaries(st.integers(-5, 400) | int32s, float32s, max_size=4),
    min_tokens=st.none() | int32s | st.integers(0, 5), n=st.none() | st.integers(-1, 10) | int32s,
    prompt_logprobs=st.none() | st.integers(-1, 7) | int32s,
    truncate_prompt_tokens=st.none() | st.integers(-2, 40) | int32s,
    response_format=st.none() | st.builds(pb.ResponseFormat, type=st.sampled_from(["json_object", "json_schema", "choice", "y"]),
                                           json_schema=st.sampled_from(["", "{", '{"type": "string", "maxLength": 2}']),
                                           choice=st.lists(st.text(max_size=3), max_size=2)),
    messages=st.lists(st.builds(pb.ChatMessage, role=st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                                content=st.text(max_size=12), name=st.text(max_size=4),
                                tool_calls=st.lists(st.builds(pb.ToolCall, id=st.text(max_size=3), function=st.builds(
                                    pb.FunctionCall, name=st.sampled_from(["f", ""]) | st.text(max_size=3),
                                    arguments=st.sampled_from(["{}", "{", ""]))), max_size=1),
                                tool_call_id=st.text(max_size=3)), max_size=2),
    chat_template_kwargs=st.dictionaries(st.sampled_from(["assistant_name", "user_name", "_x"]), st.text(max_size=8),
                                         max_size=2),
    tools=st.lists(st.builds(pb.Tool, function=st.builds(
        pb.FunctionSpec, name=st.sampled_from(["f", "g", "a b", ""]) | st.text(max_size=4), description=st.text(max_size=4),
        parameters=st.sampled_from(["", "{", "[]", '{"type": "object", "additionalProperties": false}']))), max_size=2),
    tool_choice=st.none() | st.builds(pb.ToolChoice, mode=st.sampled_from(["", "auto", "none", "required", "x"]),
                                      function=st.sampled_from(["", "f", "h"])),
    parallel_tool_calls=st.none() | st.booleans(), grammar_trace=st.booleans())


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests, streaming=st.booleans())
def test_grpc_any_field_any_value_is_ok_or_invalid_argument(live, request, streaming):
    try:
        if streaming:
            msgs = list(live.stub.Generate(request, timeout=30))
            assert msgs[-1].finish_reason in ("stop", "length", "tool_calls")
        else:
            assert live.stub.Complete(request, timeout=30).finish_reason in ("stop", "length", "tool_calls")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details(), (e.code(), e.details())


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=64))
def test_grpc_any_bytes_are_ok_or_invalid_argument(live, data):
    try:
        raw_call(live, "Complete", data, streaming=False)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details(), (e.code(), e.details())


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(prompt=st.text(max_size=40), messages=requests.map(lambda r: list(r.messages)),
       add=st.none() | st.booleans(), tokens=st.lists(int32s, max_size=5))
def test_grpc_tokenize_is_ok_or_invalid_argument(live, prompt, messages, add, tokens):
    for call in (lambda: live.stub.Tokenize(pb.TokenizeRequest(prompt=prompt, messages=messages,
                                                               add_generation_prompt=add), timeout=10),
                 lambda: live.stub.Detokenize(pb.DetokenizeRequest(tokens=tokens), timeout=10)):
        try:
            call()
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details(), (e.code(), e.details())


def test_after_all_that_the_server_still_serves(live, http):
    still_serves(live, http)
    assert all(not math.isnan(v) for v in [live.metric("shelley_requests_running")])
    assert live.metric("shelley_requests_running") == 0
