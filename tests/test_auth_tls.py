"""API keys and TLS on both front doors, against real in-process servers.

Certificates come from a test CA made at run time (trustme); every client verifies them.
"""
from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys

import grpc
import httpx
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core.errors import UserError
from serving.auth import key_ok
from serving.grpc.proto import pb, pb_grpc
from tests.serving_live import LiveServer

KEY, FILE_KEY = "sk-test-one", "sk-test-two"


def test_key_ok_is_bearer_any_key():
    keys = ("a1", "b2")
    assert key_ok((), None) and key_ok((), "whatever")
    assert key_ok(keys, "Bearer a1") and key_ok(keys, "bearer b2") and key_ok(keys, "Bearer  b2 ")
    for bad in (None, "", "a1", "Bearer", "Bearer a", "Bearer a1x", "Basic a1", "Bearer c3"):
        assert not key_ok(keys, bad), bad


# ---------- API keys ----------

@pytest.fixture(scope="module")
def keyed(art, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"# one key a line\n\n{FILE_KEY}\n")
    s = LiveServer(art, api_key=KEY, api_key_file=str(keys), max_new_tokens=100)
    yield s
    s.close()


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def test_grpc_text_generation_needs_a_key(keyed):
    req = pb.GenerateRequest(prompt="hi", max_tokens=3)
    calls = [lambda md: list(keyed.stub.Generate(req, metadata=md, timeout=10)),
             lambda md: keyed.stub.Complete(req, metadata=md, timeout=10),
             lambda md: keyed.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md, timeout=10),
             lambda md: keyed.stub.Tokenize(pb.TokenizeRequest(prompt="hi"), metadata=md, timeout=10),
             lambda md: keyed.stub.Detokenize(pb.DetokenizeRequest(tokens=[1, 2]), metadata=md, timeout=10)]
    for call in calls:
        for md in ([], bearer("sk-wrong"), [("authorization", KEY)]):
            with pytest.raises(grpc.RpcError) as e:
                call(md)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "API key" in e.value.details()
        call(bearer(KEY))
        call(bearer(FILE_KEY))
    assert keyed.metric("shelley_requests_total", rpc="Generate", code="UNAUTHENTICATED") == 3
    # denied calls still get their request id back
    call = keyed.stub.Generate(req, metadata=[("x-request-id", "denied-1")], timeout=10)
    with pytest.raises(grpc.RpcError):
        list(call)
    assert dict(call.initial_metadata())["x-request-id"] == "denied-1"


def test_health_reflection_and_metrics_stay_open(keyed):
    assert keyed.health_of() == "SERVING"
    refl = reflection_pb2_grpc.ServerReflectionStub(keyed.channel)
    answer = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=10))
    assert "shelley.v1.TextGeneration" in {s.name for s in answer.list_services_response.service}
    assert "shelley_requests_total" in keyed.scrape()
    assert httpx.get(f"{keyed.base}/health").status_code == 200
    assert httpx.get(f"{keyed.base}/").status_code == 200               # the page; its API calls need the key


def test_http_v1_needs_a_key(keyed):
    body = dict(prompt="hi", max_tokens=3, tokens=[1, 2], messages=[{"role": "user", "content": "hi"}])
    for headers in ({}, {"authorization": "Bearer sk-wrong"}, {"authorization": KEY}):
        for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/v1/nothing"),
                             ("POST", "/v1/chat/completions"), ("POST", "/tokenize"), ("POST", "/detokenize")):
            r = httpx.request(method, f"{keyed.base}{path}", json=body, headers=headers)
            err = r.json()["error"]
            assert r.status_code == 401 and (err["type"], err["code"]) == ("invalid_request_error", "invalid_api_key")
            assert r.headers["www-authenticate"] == "Bearer" and r.headers["x-request-id"]
    for key in (KEY, FILE_KEY):
        for path in ("/v1/completions", "/tokenize", "/detokenize"):
            r = httpx.post(f"{keyed.base}{path}", json=body, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
    assert keyed.metric("shelley_requests_total", rpc="POST /v1/completions", code="401") == 3


def test_openai_client_and_cli_with_a_key(keyed, capsys):
    import openai

    from serving import client

    good = openai.OpenAI(base_url=f"{keyed.base}/v1", api_key=KEY, max_retries=0)
    assert good.completions.create(model="m", prompt="hi", max_tokens=2).usage.prompt_tokens == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.base}/v1", api_key="sk-wrong", max_retries=0).models.list()
    target = f"127.0.0.1:{keyed.port}"
    assert client.main(["hi", "--target", target, "--max-tokens", "2", "--api-key", KEY]) == 0
    assert "request cmpl-" in capsys.readouterr().err
    with pytest.raises(UserError, match="UNAUTHENTICATED"):
        client.main(["hi", "--target", target, "--max-tokens", "2"])


def test_keys_never_reach_the_logs_or_help(art, tmp_path):
    """A real process with --log-format json: every line is JSON, no line holds a key."""
    from core.net import free_port

    http_port = free_port()
    env = {**os.environ, "SHELLEY_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--model", str(art), "--host", "127.0.0.1",
                             "--port", "0", "--http-port", str(http_port), "--metrics-port", "-1",
                             "--log-format", "json", "--drain-seconds", "5"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        base, out = f"http://127.0.0.1:{http_port}", ""
        for line in proc.stderr:
            out += line
            if '"serving ' in line:
                break
        for key in (KEY, "sk-wrong-key"):
            httpx.post(f"{base}/v1/completions", json=dict(prompt="hi", max_tokens=2),
                       headers={"authorization": f"Bearer {key}"}, timeout=30)
        proc.terminate()
        out += proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in out.splitlines()]     # every line one JSON object
    access = [ln for ln in lines if ln["logger"] == "shelley.access"]
    assert [a["status"] for a in access] == ["200", "401"] and proc.returncode == 0
    assert KEY not in out and "sk-wrong-key" not in out
    helptext = subprocess.run([sys.executable, "-m", "serving", "--help"], env=env, capture_output=True,
                              text=True, timeout=60).stdout
    assert "--api-key" in helptext and KEY not in helptext


def test_key_file_errors_are_one_line(art, tmp_path):
    from core.artifact import load_artifact
    from serving.config import ServeConfig
    from serving.server import Server

    empty = tmp_path / "keys"
    empty.write_text("# no keys yet\n\n")
    with pytest.raises(UserError, match="has no keys"):
        Server(ServeConfig(model=str(art), api_key_file=str(empty)), load_artifact(art))


# ---------- TLS ----------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    import trustme

    ca = trustme.CA()
    d = tmp_path_factory.mktemp("pki")
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("test-client@example.com")
    ca.cert_pem.write_to_path(d / "ca.pem")
    server.cert_chain_pems[0].write_to_path(d / "server.pem")
    server.private_key_pem.write_to_path(d / "server.key")
    client.cert_chain_pems[0].write_to_path(d / "client.pem")
    client.private_key_pem.write_to_path(d / "client.key")
    other = trustme.CA().issue_cert("127.0.0.1")             # valid, but from a CA the server does not trust
    other.cert_chain_pems[0].write_to_path(d / "other.pem")
    other.private_key_pem.write_to_path(d / "other.key")
    return d


def trust(pki, client: str | None = None) -> ssl.SSLContext:
    """What an HTTP client verifies the server with (and, for mTLS, presents)."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client:
        ctx.load_cert_chain(pki / f"{client}.pem", pki / f"{client}.key")
    return ctx


def tls_channel(s: LiveServer, pki, client: str | None = None) -> grpc.Channel:
    read = lambda name: (pki / name).read_bytes()  # noqa: E731
    creds = grpc.ssl_channel_credentials(read("ca.pem"), read(f"{client}.key") if client else None,
                                         read(f"{client}.pem") if client else None)
    return grpc.secure_channel(f"127.0.0.1:{s.port}", creds)


def generate_over(channel: grpc.Channel) -> str:
    with channel:
        stub = pb_grpc.TextGenerationStub(channel)
        return stub.Complete(pb.GenerateRequest(prompt="hi", max_tokens=3, seed=1), timeout=10).text


def test_tls_on_both_apis_with_verification(art, pki):
    s = LiveServer(art, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))
    try:
        assert s.base.startswith("https://")
        text = generate_over(tls_channel(s, pki))
        with pytest.raises(grpc.RpcError) as e:                # plaintext to a TLS port
            generate_over(grpc.insecure_channel(f"127.0.0.1:{s.port}"))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        r = httpx.post(f"{s.base}/v1/completions", json=dict(prompt="hi", max_tokens=3, seed=1), verify=trust(pki))
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == text
        with pytest.raises(httpx.ConnectError):                # an untrusted certificate is refused
            httpx.get(f"{s.base}/health")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{s.http_port}/health")
        import openai
        with httpx.Client(verify=trust(pki)) as h:
            c = openai.OpenAI(base_url=f"{s.base}/v1", api_key="x", http_client=h, max_retries=0)
            assert c.completions.create(model="m", prompt="hi", max_tokens=3, seed=1).choices[0].text == text
        from serving import client
        assert client.main(["hi", "--target", f"127.0.0.1:{s.port}", "--max-tokens", "2",
                            "--tls-ca", str(pki / "ca.pem")]) == 0
    finally:
        s.close()


def test_mtls_requires_a_client_certificate_on_both_apis(art, pki):
    s = LiveServer(art, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                   tls_client_ca=str(pki / "ca.pem"))
    try:
        assert generate_over(tls_channel(s, pki, client="client"))
        for cert in (None, "other"):
            with pytest.raises(grpc.RpcError) as e:
                generate_over(tls_channel(s, pki, client=cert))
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert httpx.get(f"{s.base}/health", verify=trust(pki, "client")).status_code == 200
        for cert in (None, "other"):
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{s.base}/health", verify=trust(pki, cert))
    finally:
        s.close()


def test_a_bad_certificate_is_a_one_line_error(art, pki, tmp_path):
    from core.artifact import load_artifact
    from serving.config import ServeConfig
    from serving.server import Server

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for cert, key in ((junk, pki / "server.key"), (pki / "server.pem", pki / "client.key")):
        server = Server(ServeConfig(model=str(art), tls_cert=str(cert), tls_key=str(key), port=0, http_port=0,
                                    metrics_port=-1), load_artifact(art))
        with pytest.raises(UserError, match="--tls-cert/--tls-key"):
            asyncio.run(server.start())
