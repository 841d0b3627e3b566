"""The modern block through export and serving: one GroupQueryAttention a layer with
kv_num_heads = n_kv_head and rotary inside, export.verify's parity (fp32, fp16, int8), the
artifact's KV cache in n_kv_head heads, and a real server's greedy tokens equal PyTorch's."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from core.artifact import load_artifact
from core.errors import UserError
from core.model_config import ModelConfig
from export.__main__ import main as export_main
from export.build import ExportConfig, export_run
from export.verify import verify
from serving.engine.runtime import Runtime
from tests.serving_live import LiveServer
from training.checkpoint import load_run, save_checkpoint
from training.generate import generate
from training.model import build_model


def random_run(path: Path, like: Path, **overrides) -> Path:
    """A run dir with `like`'s tokenizer and shape (plus overrides) and random weights."""
    path.mkdir()
    ckpt = torch.load(like / "ckpt.pt", weights_only=True)
    cfg = ModelConfig(**{**ckpt["model_config"], **overrides})
    torch.manual_seed(0)
    save_checkpoint(path / "ckpt.pt", {"model_config": cfg.to_dict(), "model": build_model(cfg).state_dict()})
    (path / "tokenizer.json").write_text((like / "tokenizer.json").read_text())
    return path


@pytest.fixture(scope="module")
def qart(tiny_qwen3_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qart") / "tiny-qwen3"
    assert export_main(["--run", str(tiny_qwen3_run), "--out", str(out), "--dtype", "fp16", "--quantize", "int8"]) == 0
    return out


def test_verify_passes_every_check(qart, tiny_qwen3_run):
    checks = verify(qart, tiny_qwen3_run)
    assert [c.name for c in checks if not c.ok] == []
    assert any(c.name.startswith("extension") for c in checks) and any("int8" in c.name for c in checks)


def test_graph_has_one_rotary_gqa_a_layer_over_one_kv_head(qart):
    meta = json.loads((qart / "model_config.json").read_text())
    assert (meta["derived"]["architecture"], meta["derived"]["kv_heads"]) == ("qwen3", 1)
    graph = onnx.load(str(qart / "model.onnx")).graph
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == 2
    for node in gqa:
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs == {"num_heads": 2, "kv_num_heads": 1, "do_rotary": 1, "rotary_interleaved": 0}
        assert node.input[1] and node.input[2]                         # q, k, v apart
        assert node.input[9] == "position_ids"                         # rotary at the graph's positions
    past = next(i for i in graph.input if i.name == "past_key_values.0.key")
    assert [d.dim_value or d.dim_param for d in past.type.tensor_type.shape.dim] == ["batch", 1, 32, 16]
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        onnx.checker.check_model(str(qart / name), full_check=True)


def test_runtime_cache_holds_n_kv_head_heads(qart):
    rt = Runtime(load_artifact(qart), device="cpu", threads=1, slots=3)
    assert rt.cache.host(0)[0].shape == (3, 1, 32, 16)


def test_server_greedy_equals_pytorch(qart, tiny_qwen3_run):
    model, _, tok = load_run(tiny_qwen3_run)
    prompt = "Shall I compare thee"
    want = list(generate(model, tok.encode(prompt).ids, 40, temperature=0.0))
    live = LiveServer(qart, max_batch=4)
    try:
        _, got, _ = live.generate(prompt=prompt, max_tokens=40, temperature=0, ignore_eos=True)
    finally:
        live.close()
    assert got == want


@pytest.mark.parametrize("overrides, message", [
    (dict(n_head=4, n_kv_head=2), "multiple of 16"),      # heads of 8: rotary's kernel needs 16
    (dict(model="bigram", n_kv_head=0, tie_embeddings=True), "has no KV cache|supports gpt and qwen3"),
])
def test_refused_in_one_line(tiny_qwen3_run, tmp_path, overrides, message):
    run = random_run(tmp_path / "run", tiny_qwen3_run, **overrides)
    with pytest.raises(UserError, match=message):
        export_run(ExportConfig(run=str(run), out=str(tmp_path / "art")))


@pytest.mark.parametrize("overrides", [dict(tie_embeddings=True, n_kv_head=2),
                                       dict(mlp="relu2", norm="layer", qk_norm=False)],
                         ids=["tied-full-kv", "ladder-rung"])
def test_other_layouts_keep_parity(tiny_qwen3_run, tmp_path, overrides):
    """A tied head with as many KV heads as query heads, and a ladder rung (the graph is the
    model's own forward, so any layout the model builds exports)."""
    run = random_run(tmp_path / "run", tiny_qwen3_run, **overrides)
    export_run(ExportConfig(run=str(run), out=str(tmp_path / "art")))
    assert [c.name for c in verify(tmp_path / "art", run) if not c.ok] == []
