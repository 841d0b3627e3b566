"""The HTTP front door against a real in-process server: OpenAI-compatible completions (raw
SSE with httpx, and the official `openai` client), errors one by one, disconnects, drain,
request ids and access lines. The same engine serves gRPC in the same process."""
from __future__ import annotations

import json
import logging
import socket
import threading

import grpc
import httpx
import pytest

from serving.grpc.proto import pb
from tests.serving_live import LiveServer

MAX_NEW = 20000
PROMPT = "ROMEO:\nBut, soft!"


def sse(response: httpx.Response) -> list:
    """The `data:` payloads of an SSE response, JSON-decoded ([DONE] kept as a string)."""
    out = []
    for line in response.iter_lines():
        if line:
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_stream_is_sse_with_usage_and_done_and_equals_grpc(live, http):
    body = dict(prompt=PROMPT, max_tokens=40, temperature=0.8, seed=7, stream=True,
                stream_options={"include_usage": True}, ignore_eos=True)
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
        rid = r.headers["x-request-id"]
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 40,
                                                         "total_tokens": len(PROMPT) + 40,
                                                         "prompt_tokens_details": {"cached_tokens": 0}}
    chunks = events[:-2]
    assert all(c["id"] == rid and c["object"] == "text_completion" and c["usage"] is None for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    want, _, _ = live.generate(prompt=PROMPT, max_tokens=40, temperature=0.8, seed=7, ignore_eos=True)
    assert text == want and len(want) > 0


def test_whole_completion_shape(live, http):
    r = http.post("/v1/completions", json=dict(prompt=PROMPT, max_tokens=12, seed=5, model="anything", user="u"))
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"] == r.headers["x-request-id"] and body["model"] == live.server.card.name
    choice = body["choices"][0]
    assert (choice["index"], choice["finish_reason"], choice["logprobs"]) == (0, "length", None)
    assert body["usage"]["completion_tokens"] == 12
    assert choice["text"] == live.generate(prompt=PROMPT, max_tokens=12, seed=5)[0]


def test_logprobs_in_the_openai_shape(live, http):
    r = http.post("/v1/completions", json=dict(prompt=PROMPT, max_tokens=20, temperature=0, logprobs=3,
                                               ignore_eos=True))
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 20
    assert "".join(lp["tokens"]) == choice["text"]                     # plain characters here
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(20)]
    for tok, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) <= 3 and max(top.values()) == value and top[tok] == value   # greedy: the best
    grpc_lp = [e for m in live.stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_tokens=20, temperature=0,
                                                                logprobs=3, ignore_eos=True)) for e in m.logprobs]
    assert lp["token_logprobs"] == pytest.approx([e.logprob for e in grpc_lp], abs=1e-6)
    with http.stream("POST", "/v1/completions", json=dict(prompt=PROMPT, max_tokens=20, temperature=0, logprobs=0,
                                                          stream=True, ignore_eos=True)) as s:
        chunks = [c for c in sse(s) if c != "[DONE]"]
    streamed = [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]]
    assert streamed == lp["tokens"] and all(t == {} for c in chunks for t in c["choices"][0]["logprobs"]["top_logprobs"])


def test_the_openai_client_works_streaming_and_not(live):
    import openai

    client = openai.OpenAI(base_url=f"{live.base}/v1", api_key="none-needed", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == [live.server.card.name]
    c = client.completions.create(model=models.data[0].id, prompt=PROMPT, max_tokens=10, seed=3, logprobs=2,
                                  extra_body={"ignore_eos": True})
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 10
    assert len(c.choices[0].logprobs.tokens) == 10
    stream = client.completions.create(model=models.data[0].id, prompt=PROMPT, max_tokens=10, seed=3, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    parts = list(stream)
    assert "".join(p.choices[0].text for p in parts if p.choices) == c.choices[0].text
    assert parts[-1].usage.completion_tokens == 10
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="m", prompt=PROMPT, max_tokens=0)
    assert e.value.status_code == 400 and "max_tokens" in e.value.message


# Each bad input alone: (body, the message's start, param). The engine's limits give the
# same messages as gRPC (checked below against INVALID_ARGUMENT details).
BAD = [
    (dict(prompt="x" * 33), "prompt is 33 tokens; the limit is the context length, 32", "prompt"),
    (dict(prompt="hi", max_tokens=0), f"max_tokens must be between 1 and {MAX_NEW}, got 0", "max_tokens"),
    (dict(prompt="hi", max_tokens=MAX_NEW + 1), f"max_tokens must be between 1 and {MAX_NEW}", "max_tokens"),
    (dict(prompt="hi", temperature=-0.5), "temperature must be >= 0, got -0.5", "temperature"),
    (dict(prompt="hi", top_p=0.0), "top_p must be in (0, 1], got 0.0", "top_p"),
    (dict(prompt="hi", top_p=1.5), "top_p must be in (0, 1], got 1.5", "top_p"),
    (dict(prompt="hi", top_k=-1), "top_k must be between 0 and 2147483647 (0 = off), got -1", "top_k"),
    (dict(prompt="hi", logprobs=6), "logprobs must be between 0 and 5, got 6", "logprobs"),
    (dict(prompt="hi", stop=["a"] * 9), "stop has 9 strings; the limit is 8", "stop"),
    (dict(prompt="hi", stop="x" * 65), "stop strings must be 1 to 64 characters, got 65", "stop"),
    (dict(prompt="hi", stop=[""]), "stop strings must be 1 to 64 characters, got 0", "stop"),
    (dict(prompt="hi", presence_penalty=2.5), "presence_penalty must be between -2 and 2, got 2.5", "presence_penalty"),
    (dict(prompt="hi", frequency_penalty=-3), "frequency_penalty must be between -2 and 2, got -3", "frequency_penalty"),
    (dict(prompt="hi", repetition_penalty=0), "repetition_penalty must be > 0 (1 = off), got 0", "repetition_penalty"),
    (dict(prompt="hi", logit_bias={"99999": 5}), "logit_bias keys must be token ids 0..", "logit_bias"),
    (dict(prompt="hi", logit_bias={"3": 101}), "logit_bias values must be between -100 and 100, got 101.0 for token 3",
     "logit_bias"),
    (dict(prompt="hi", logit_bias={str(i): 1 for i in range(301)}), "logit_bias has 301 entries; the limit is 300",
     "logit_bias"),
    (dict(prompt="hi", max_tokens=5, min_tokens=6), "min_tokens must be between 0 and max_tokens (5), got 6",
     "min_tokens"),
    (dict(prompt="hi", n=9), "n must be between 1 and 8, got 9", "n"),
    (dict(prompt="hi", n=2, max_tokens=MAX_NEW), f"n x max_tokens is 2 x {MAX_NEW} = {2 * MAX_NEW} tokens; the limit "
     f"for one request is {MAX_NEW}", "n"),
]
BAD_HTTP_ONLY = [
    (dict(prompt="hi", n="2"), "n must be an integer", "n"),
    (dict(prompt="hi", echo="yes"), "echo must be true or false", "echo"),
    (dict(prompt="hi", logit_bias={"a": 1}), "logit_bias keys must be token ids (integers, as JSON strings)",
     "logit_bias"),
    (dict(prompt="hi", logit_bias={"3": "up"}), "logit_bias values must be numbers", "logit_bias"),
    (dict(prompt="hi", logit_bias=[3]), "logit_bias must be an object", "logit_bias"),
    (dict(prompt="hi", presence_penalty="x"), "presence_penalty must be a number", "presence_penalty"),
    (dict(prompt="hi", best_of=3), "best_of must be 1", "best_of"),
    (dict(prompt=["a", "b"]), "prompt must be a string", "prompt"),
    (dict(prompt=5), "prompt must be a string", "prompt"),
    (dict(prompt="hi", max_tokens="9"), "max_tokens must be an integer, got '9'", "max_tokens"),
    (dict(prompt="hi", max_tokens=2.5), "max_tokens must be an integer", "max_tokens"),
    (dict(prompt="hi", temperature="hot"), "temperature must be a number", "temperature"),
    (dict(prompt="hi", stop=5), "stop must be a string or a list of strings", "stop"),
    (dict(prompt="hi", stream="yes"), "stream must be true or false", "stream"),
    (dict(prompt="hi", seed=-1), "seed must be a non-negative integer, got -1", "seed"),
    (dict(prompt="hi", logprobs=True), "logprobs must be an integer, got True", "logprobs"),
    (["a list"], "the body must be a JSON object", None),
]


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("body,message,param", BAD + BAD_HTTP_ONLY,
                         ids=[f"{i}-{p}" for i, (_, _, p) in enumerate(BAD + BAD_HTTP_ONLY)])
def test_each_bad_input_is_a_400_in_openai_shape(live, http, body, message, param):
    for stream in (False, True):
        sent = {**body, "stream": stream} if isinstance(body, dict) and "stream" not in body else body
        r = http.post("/v1/completions", json=sent)
        err = error_of(r)
        assert r.status_code == 400, err
        assert err["message"].startswith(message) and (err["type"], err["param"]) == ("invalid_request_error", param)
    if (body, message, param) in BAD:      # the same refusal, word for word, over gRPC
        fields = {**body, "stop": [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop", []),
                  "logit_bias": {int(k): v for k, v in body.get("logit_bias", {}).items()}}
        with pytest.raises(grpc.RpcError) as e:
            live.stub.Complete(pb.GenerateRequest(**fields), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details() == err["message"]


def test_body_that_is_not_json_or_too_big(http):
    r = http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["message"].startswith("the body is not valid JSON")
    r = http.post("/v1/completions", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["message"].startswith("the body is not valid JSON")
    r = http.post("/v1/completions", json={"prompt": "x" * (2 << 20)})
    assert r.status_code == 413 and "over the limit of 1048576 bytes" in error_of(r)["message"]


def test_unknown_fields_are_ignored_and_routes_answer_in_shape(http):
    r = http.post("/v1/completions", json=dict(prompt="hi", max_tokens=2, frobnicate={"a": 1}, user="me",
                                               presence_penalty=0, logit_bias={}, n=1, suffix=None))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = http.get("/v1/completions")
    assert r.status_code == 405 and error_of(r)["type"] == "invalid_request_error"
    assert http.get("/health").json() == {"status": "SERVING"}
    page = http.get("/")
    assert page.status_code == 200 and "shelley playground" in page.text
    assert http.get("/playground/playground.js").status_code == 200


def test_request_ids_come_back_on_both_apis(live, http):
    r = http.post("/v1/completions", json=dict(prompt="hi", max_tokens=2), headers={"x-request-id": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42" and r.json()["id"] == "trace-42"
    generated = http.post("/v1/completions", json=dict(prompt="hi", max_tokens=2))
    assert generated.headers["x-request-id"].startswith("cmpl-") and len(generated.headers["x-request-id"]) > 20
    odd = http.post("/v1/completions", json=dict(prompt="hi", max_tokens=2), headers={"x-request-id": "a b\"c"})
    assert odd.headers["x-request-id"].startswith("cmpl-")          # not echoed into logs as given
    call = live.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), metadata=[("x-request-id", "g-7")])
    list(call)
    assert dict(call.initial_metadata())["x-request-id"] == "g-7"
    _, call = live.stub.Complete.with_call(pb.GenerateRequest(prompt="hi", max_tokens=2))
    assert dict(call.initial_metadata())["x-request-id"].startswith("cmpl-")


def test_one_access_line_per_request(live, http, caplog):
    caplog.set_level(logging.INFO, logger="shelley.access")
    http.post("/v1/completions", json=dict(prompt=PROMPT, max_tokens=5, ignore_eos=True), headers={"x-request-id": "acc-1"})
    http.post("/v1/completions", json=dict(prompt="hi", max_tokens=0), headers={"x-request-id": "acc-2"})
    list(live.stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_tokens=4, ignore_eos=True),
                            metadata=[("x-request-id", "acc-3")]))
    assert live.wait_for(lambda: sum(r.name == "shelley.access" for r in caplog.records) >= 3, 5)
    lines = {r.fields["request_id"]: r.fields for r in caplog.records if r.name == "shelley.access"}
    ok, bad, rpc = lines["acc-1"], lines["acc-2"], lines["acc-3"]
    assert (ok["api"], ok["method"], ok["status"], ok["prompt_tokens"], ok["completion_tokens"], ok["finish_reason"]) \
        == ("http", "POST /v1/completions", "200", len(PROMPT), 5, "length")
    assert 0 < ok["ttft_ms"] <= ok["duration_ms"]
    assert (bad["status"], bad["completion_tokens"], bad["finish_reason"], bad["ttft_ms"]) == ("400", 0, None, None)
    assert (rpc["api"], rpc["method"], rpc["status"], rpc["completion_tokens"]) == ("grpc", "Generate", "OK", 4)


def test_json_and_text_log_lines():
    from serving.logs import JsonFormatter, TextFormatter

    rec = logging.LogRecord("shelley.access", logging.INFO, __file__, 1, "request", None, None)
    rec.fields = {"request_id": "r-1", "method": "POST /v1/completions", "ttft_ms": None}
    line = json.loads(JsonFormatter().format(rec))
    assert (line["level"], line["logger"], line["message"], line["request_id"], line["ttft_ms"]) == \
        ("info", "shelley.access", "request", "r-1", None)
    assert TextFormatter("%(message)s").format(rec) == 'request request_id=r-1 method="POST /v1/completions" ttft_ms=-'
    rec.fields = {"method": "GET /v1/a\nforged=1"}                    # a %0A in a path stays on its line
    assert TextFormatter("%(message)s").format(rec) == 'request method="GET /v1/a\\nforged=1"'


def running_zero(live) -> bool:
    return live.wait_for(lambda: live.metric("shelley_requests_running") == 0, 10)


def test_a_client_that_disconnects_frees_its_row(live, http):
    gone = lambda: live.metric("shelley_requests_total", rpc="POST /v1/completions", code="499")  # noqa: E731
    before = gone()
    body = dict(prompt="hi", max_tokens=MAX_NEW, ignore_eos=True, stream=True)
    with http.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        next(lines), next(lines)
        assert live.metric("shelley_requests_running") == 1
    assert running_zero(live)
    assert live.wait_for(lambda: gone() == before + 1, 5)
    # a whole (non-streamed) completion: the server notices the hang-up too
    with socket.create_connection(("127.0.0.1", live.http_port)) as s:
        payload = json.dumps(dict(prompt="hi", max_tokens=MAX_NEW, ignore_eos=True)).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
        assert live.wait_for(lambda: live.metric("shelley_requests_running") == 1, 10)
    assert running_zero(live)
    assert live.wait_for(lambda: gone() == before + 2, 5)


def test_queue_full_is_429(art):
    s = LiveServer(art, max_batch=1, max_queue=1, max_new_tokens=MAX_NEW)
    calls = []
    try:
        long = pb.GenerateRequest(prompt="hi", max_tokens=MAX_NEW, ignore_eos=True)
        calls.append(s.stub.Generate(long, timeout=60))
        next(calls[0])                              # the one row is taken (over gRPC: one engine)
        calls.append(s.stub.Generate(long, timeout=60))
        threading.Thread(target=LiveServer.drain_quietly, args=(calls[-1],), daemon=True).start()
        assert s.wait_for(lambda: s.metric("shelley_requests_waiting") == 1)
        r = httpx.post(f"{s.base}/v1/completions", json=dict(prompt="hi", max_tokens=3, stream=True), timeout=10)
        err = error_of(r)
        assert r.status_code == 429 and (err["type"], err["code"]) == ("rate_limit_error", "queue_full")
        assert "queue is full" in err["message"]
    finally:
        for c in calls:
            c.cancel()
        s.close()


def test_loading_and_draining_are_503(art):
    s = LiveServer(art, load=False, max_new_tokens=MAX_NEW, drain_seconds=30)
    try:
        assert httpx.get(f"{s.base}/health").status_code == 503
        r = httpx.post(f"{s.base}/v1/completions", json=dict(prompt="hi"))
        assert r.status_code == 503 and "loading" in error_of(r)["message"]
        s.call(s.server.load())
        assert httpx.get(f"{s.base}/health").json() == {"status": "SERVING"}
        events, started = [], threading.Event()

        def stream():
            body = dict(prompt="hi", max_tokens=3000, ignore_eos=True, stream=True)
            with httpx.stream("POST", f"{s.base}/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    started.set()
                    if line:
                        events.append(line)
        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(10)
        drained = s.spawn(s.server.drain())
        assert s.wait_for(lambda: httpx.get(f"{s.base}/health").status_code == 503, 5)
        r = httpx.post(f"{s.base}/v1/completions", json=dict(prompt="hi"))
        assert r.status_code == 503 and "shutting down" in error_of(r)["message"] and error_of(r)["code"] == "unavailable"
        reader.join(30)
        data = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
        assert events[-1] == "data: [DONE]" and data[-1]["choices"][0]["finish_reason"] == "length"
        drained.result(30)
        with pytest.raises(httpx.TransportError):      # stopped: the port is closed
            httpx.get(f"{s.base}/health", timeout=2)
    finally:
        s.channel.close()
        s.loop.call_soon_threadsafe(s.loop.stop)


def test_http_port_minus_one_turns_it_off(art):
    s = LiveServer(art, load=False, http_port=-1)
    try:
        assert s.server.http is None and s.http_port == 0
    finally:
        s.close()


def test_config_flags_for_http_keys_tls_and_logs(tmp_path):
    from core.errors import UserError
    from serving.config import parse_args

    cfg = parse_args(["--model", "a"], environ={"SHELLEY_HTTP_PORT": "-1", "SHELLEY_LOG_FORMAT": "json",
                                                "SHELLEY_API_KEY": "s3cret"})
    assert (cfg.http_port, cfg.log_format, cfg.api_key) == (-1, "json", "s3cret")
    assert "s3cret" not in repr(cfg)
    assert parse_args(["--model", "a"], environ={}).http_port == 8000
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    for argv, words in [(["--http-port", "-2"], "--http-port"), (["--log-format", "xml"], "--log-format"),
                        (["--api-key-file", str(tmp_path / "none")], "--api-key-file"),
                        (["--tls-cert", str(cert)], "--tls-key"),
                        (["--tls-client-ca", str(cert)], "--tls-client-ca needs --tls-cert"),
                        (["--tls-cert", str(cert), "--tls-key", str(tmp_path / "k")], "--tls-key")]:
        with pytest.raises(UserError, match=words):
            parse_args(["--model", "a", *argv], environ={})


def test_the_playground_ships_as_package_data():
    """An installed package (and the image, which copies serving/) carries the page."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["serving"]
    files = [p.relative_to(root / "serving").as_posix() for p in (root / "serving" / "http" / "playground").iterdir()]
    assert {"http/playground/index.html", "http/playground/playground.js", "http/playground/playground.css"} <= set(files)
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)


def test_a_taken_http_port_is_a_one_line_error(art):
    import asyncio

    from core.artifact import load_artifact
    from core.errors import UserError
    from serving.config import ServeConfig
    from serving.server import Server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = ServeConfig(model=str(art), host="127.0.0.1", port=0, metrics_port=-1,
                          http_port=taken.getsockname()[1])

        async def start():
            server = Server(cfg, load_artifact(art))
            try:
                await server.start()
            finally:
                if server._grpc:
                    await server._grpc.stop(None)
        with pytest.raises(UserError, match="--http-port .* pick another port, or -1"):
            asyncio.run(start())
