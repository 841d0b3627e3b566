"""Embeddings: the export's embed.onnx against the model's own forward (GPT and Qwen3), and
POST /v1/embeddings through the official `openai` client (floats, base64, batches of strings
and token ids, usage), bad inputs as 400s naming the field, and an old artifact's clear 400."""
from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.artifact import EMBED_FILE, MANIFEST_NAME
from export.embed_graph import export_embed, final_norm
from tests.serving_live import LiveServer
from tests.test_abuse import hostile_text, json_values

TEXTS = ["Shall I compare thee", "to a summer's day?", "Thou art more lovely"]


def states_of(model, ids: torch.Tensor) -> np.ndarray:
    """The final norm's output in PyTorch: what the head reads."""
    seen = []
    hook = final_norm(model).register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(ids)
    hook.remove()
    return seen[0].numpy()


@pytest.mark.parametrize("kind", ["gpt", "qwen3"])
def test_the_graph_is_the_models_final_norm_and_padding_changes_nothing(kind, tiny_run, tmp_path):
    from core.model_config import ModelConfig
    from training.checkpoint import load_run
    from training.model import build_model

    if kind == "gpt":
        model = load_run(tiny_run)[0].eval()
    else:
        torch.manual_seed(0)
        model = build_model(ModelConfig(model="qwen3", vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                        block_size=32)).eval()
    export_embed(model, tmp_path / "embed.onnx")
    session = ort.InferenceSession(str(tmp_path / "embed.onnx"), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, model.config.vocab_size, (3, 20))
    got = session.run(None, {"input_ids": ids.numpy()})[0]
    assert got.shape == (3, 20, model.config.n_embd)
    assert np.abs(got - states_of(model, ids)).max() < 1e-4
    alone = session.run(None, {"input_ids": ids[1:2, :7].numpy()})[0]     # row 1's first 7 tokens, unpadded
    assert np.abs(alone - got[1:2, :7]).max() < 1e-5


@pytest.fixture(scope="module")
def client(live):
    import openai
    return openai.OpenAI(base_url=f"{live.base}/v1", api_key="none-needed", max_retries=0)


def pooled(art, ids: list[int]) -> np.ndarray:
    """The mean of embed.onnx's states over the tokens, of length 1: what the server promises."""
    session = ort.InferenceSession(str(art / EMBED_FILE), providers=["CPUExecutionProvider"])
    v = session.run(None, {"input_ids": np.array([ids])})[0][0].mean(0)
    return v / np.linalg.norm(v)


def test_the_openai_client_gets_mean_pooled_unit_vectors(live, client, art):
    width = live.server.artifact.config.model.n_embd
    r = client.embeddings.create(model="m", input=TEXTS)
    assert [d.index for d in r.data] == [0, 1, 2] and r.object == "list" and r.model == live.server.card.name
    tok = live.server.artifact.tokenizer
    ids = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(map(len, ids))
    for d, row in zip(r.data, ids):
        v = np.array(d.embedding)
        assert v.shape == (width,) and abs(np.linalg.norm(v) - 1) < 1e-5
        assert np.abs(v - pooled(art, row)).max() < 1e-5          # batched and padded = alone
    one = client.embeddings.create(model="m", input=ids[1])        # token ids, one input
    assert np.abs(np.array(one.data[0].embedding) - np.array(r.data[1].embedding)).max() < 1e-6
    b64 = client.embeddings.create(model="m", input=[ids[0], TEXTS[2]], encoding_format="base64", dimensions=width)
    got = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in b64.data]
    assert np.abs(got[0] - np.array(r.data[0].embedding)).max() < 1e-6
    assert np.abs(got[1] - np.array(r.data[2].embedding)).max() < 1e-6


@pytest.mark.parametrize("body, param", [
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": ""}, "input"),
    ({"input": ["fine", ""]}, "input[1]"),
    ({"input": ["fine", 3]}, "input[1]"),
    ({"input": [[1, 2], [1, "x"]]}, "input[1]"),
    ({"input": [1, 99999]}, "input"),
    ({"input": [[5], [-1]]}, "input[1]"),
    ({"input": "x" * 40}, "input"),                   # the tiny model's context is 32 tokens
    ({"input": ["a"] * 2049}, "input"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "hi", "dimensions": 8}, "dimensions"),
    ({"input": "hi", "dimensions": "8"}, "dimensions"),
    ({"input": "\ud800"}, "input"),
])
def test_bad_input_is_a_400_naming_the_field(http, body, param):
    r = http.post("/v1/embeddings", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["message"], r.json()


def test_an_artifact_exported_before_embeddings_says_to_re_export(art, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(art, old)
    (old / EMBED_FILE).unlink()
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    del manifest["files"][EMBED_FILE]
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))
    s = LiveServer(old, max_batch=2)
    try:
        import httpx
        r = httpx.post(f"{s.base}/v1/embeddings", json={"input": "hi"})
        assert r.status_code == 400 and "re-run `python -m export" in r.json()["error"]["message"]
        assert httpx.post(f"{s.base}/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    finally:
        s.close()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.fixed_dictionaries({}, optional={
    "input": st.sampled_from(["Good morrow.", "", "x" * 40]) | hostile_text | st.lists(st.integers(-2, 400), max_size=40)
    | st.lists(hostile_text | st.lists(st.integers(-2, 400), max_size=3) | json_values(), max_size=3),
    "encoding_format": st.sampled_from(["float", "base64", "int8"]), "dimensions": st.integers(-1, 64),
    "model": st.text(max_size=3), "user": st.text(max_size=3)}) | json_values())
def test_any_field_any_type_is_never_a_5xx(live, http, body):
    r = http.post("/v1/embeddings", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert all(isinstance(d["embedding"], str) or abs(np.linalg.norm(d["embedding"]) - 1) < 1e-5   # base64
                   for d in r.json()["data"])
    assert live.metric("shelley_requests_total", rpc="POST /v1/embeddings", code="500") == 0
