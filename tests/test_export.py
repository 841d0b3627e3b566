"""Export: the artifact contract, ONNX Runtime parity with PyTorch, and bad input.

The trained `tiny_run` (tests/conftest.py) is exported once per session; runs with random
weights (make_run) stand in for the odd cases: another model's weights, a bigram, a torn file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.checkpoint import load_tokenizer, save_checkpoint
from training.cli import UserError
from training.model import build_model
from training.model_config import ModelConfig
from training.tokenizer import build_tokenizer, eos_id

from export.__main__ import check_runnable, main as export_main
from export.artifact import check_manifest
from export.onnx_graph import graph_names
from export.verify import main as verify_main, verify

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def make_run(path: Path, seed: int = 0, like: Path | None = None, **overrides) -> Path:
    """A run dir with random weights (shaped like run dir `like`, if given)."""
    path.mkdir(parents=True)
    if like is None:
        tok = build_tokenizer("char", [TEXT])
        base = dict(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=2, n_head=2, n_embd=32)
    else:
        tok = load_tokenizer(like)
        base = torch.load(like / "ckpt.pt", weights_only=True)["model_config"]
    cfg = ModelConfig(**{**base, **overrides})
    torch.manual_seed(seed)
    model = build_model(cfg)
    save_checkpoint(path / "ckpt.pt", {"model_config": cfg.to_dict(), "train_config": {},
                                       "model": model.state_dict(), "iter": 0, "best_val_loss": 0.0})
    tok.save(str(path / "tokenizer.json"))
    (path / "summary.json").write_text(json.dumps({"params": 1, "iters": 0}))
    return path


@pytest.fixture(scope="session")
def art(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "tiny"
    assert export_main(["--run", str(tiny_run), "--out", str(out), "--dtype", "fp16"]) == 0
    return out


def test_artifact_files_and_config(art, tiny_run):
    assert sorted(p.name for p in art.iterdir()) == [
        "manifest.json", "model.fp16.onnx", "model.onnx", "model_config.json", "tokenizer.json"]
    meta = json.loads((art / "model_config.json").read_text())
    inputs, outputs = graph_names(2)
    assert meta["onnx"]["inputs"] == inputs and meta["onnx"]["outputs"] == outputs
    assert inputs[:4] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert outputs[:3] == ["logits", "present.0.key", "present.0.value"]
    assert meta["onnx"]["fp16"] == "model.fp16.onnx" and meta["onnx"]["opset"] == 17
    assert (meta["architecture"], meta["context_length"], meta["window_keep"]) == ("gpt", 32, 24)
    assert meta["pad_token_id"] == meta["eos_token_id"] == eos_id(load_tokenizer(tiny_run))
    assert meta["name"] == tiny_run.name and meta["params"] > 0
    sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == inputs
    assert [o.name for o in sess.get_outputs()] == outputs
    assert sess.get_inputs()[3].shape[2] == "past_sequence" and sess.get_inputs()[3].type == "tensor(float)"


def test_checker_passes(art):
    for name in ("model.onnx", "model.fp16.onnx"):
        onnx.checker.check_model(str(art / name), full_check=True)


def test_graph_is_lean(art):
    """What makes decode fast: MultiHeadAttention masks and adds the qkv bias itself."""
    graph = onnx.load(str(art / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    mha = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    assert len(mha) == 2  # one per layer
    for node in mha:
        assert node.input[3] and node.input[4] and not node.input[5]  # bias, key mask, no additive bias
        assert {a.name: a.i for a in node.attribute}["unidirectional"] == 1
    assert ops.count("FastGelu") == 2
    # no mask subgraph, and no SkipLayerNormalization (slower than Add + LayerNorm on CPU)
    assert not {"Where", "Range", "Not", "SkipLayerNormalization"} & set(ops)
    assert len(ops) <= 40, ops


def test_manifest_hashes_match_files(art, tiny_run, tmp_path):
    manifest = json.loads((art / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "model.fp16.onnx", "model_config.json", "tokenizer.json"}
    assert manifest["training"] == json.loads((tiny_run / "summary.json").read_text())
    assert set(manifest["versions"]) == {"torch", "onnx", "onnxruntime"}
    assert check_manifest(art) == []
    copy = shutil.copytree(art, tmp_path / "copy")
    with open(copy / "tokenizer.json", "a") as f:
        f.write(" ")
    assert check_manifest(copy) == ["tokenizer.json: sha256 does not match manifest.json"]


def test_fp16_file_runs(art):
    sess = ort.InferenceSession(str(art / "model.fp16.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.ones((1, 3), np.int64),
             "position_ids": np.array([[0, 1, 2]])}
    for i in sess.get_inputs()[3:]:
        feeds[i.name] = np.zeros((1, 2, 0, 16), np.float16)
    logits, key0 = sess.run(["logits", "present.0.key"], feeds)
    assert logits.dtype == np.float16 and logits.shape[:2] == (1, 3) and np.isfinite(logits).all()
    assert key0.shape == (1, 2, 3, 16)


def test_parity_with_pytorch(art, tiny_run, capsys):
    checks = verify(art, tiny_run)
    names = " | ".join(c.name for c in checks)
    for part in ("prefill, prompt of 1", "prefill, prompt of 32", "decode, 50 steps",
                 "greedy tokens, 200 steps", "left-padded batch", "fp16 file"):
        assert part in names
    assert all(c.ok for c in checks), [(c.name, c.value) for c in checks if not c.ok]
    assert verify_main([str(art), "--run", str(tiny_run)]) == 0
    assert "parity: ok" in capsys.readouterr().out


def test_verify_fails_against_other_weights(art, tiny_run, tmp_path, capsys):
    other = make_run(tmp_path / "other", seed=1, like=tiny_run)
    assert verify_main([str(art), "--run", str(other)]) == 1
    assert "parity: FAILED" in capsys.readouterr().out


def test_force_overwrites(tiny_run, tmp_path):
    out = tmp_path / "art"
    assert export_main(["--run", str(tiny_run), "--out", str(out), "--dtype", "fp16"]) == 0
    assert export_main(["--run", str(tiny_run), "--out", str(out), "--force"]) == 0
    assert not (out / "model.fp16.onnx").exists()
    assert json.loads((out / "model_config.json").read_text())["onnx"]["fp16"] is None
    assert check_manifest(out) == []


def bad(argv: list[str], capsys) -> str:
    """Run the CLI as `python -m export` would; return its one error line."""
    from training.cli import run_main
    with pytest.raises(SystemExit) as e:
        run_main(export_main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs(tiny_run, art, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "does not exist" in bad(["--run", str(tmp_path / "nope"), "--out", out], capsys)
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "ckpt.pt").write_bytes(b"not a checkpoint")
    assert "corrupt" in bad(["--run", str(torn), "--out", out], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no checkpoint" in bad(["--run", str(empty), "--out", out], capsys)
    bigram = make_run(tmp_path / "bigram", model="bigram")
    assert "export supports gpt" in bad(["--run", str(bigram), "--out", out], capsys)
    unknown = make_run(tmp_path / "unknown")
    ckpt = torch.load(unknown / "ckpt.pt", weights_only=True)
    ckpt["model_config"]["model"] = "rnn"
    torch.save(ckpt, unknown / "ckpt.pt")
    assert "export supports gpt" in bad(["--run", str(unknown), "--out", out], capsys)
    assert "already exists; pass --force" in bad(["--run", str(tiny_run), "--out", str(art)], capsys)
    assert "--opset 99 is not supported" in bad(["--run", str(tiny_run), "--out", out, "--opset", "99"], capsys)
    assert not Path(out).exists()


def test_opset_ort_cannot_run(art, tmp_path):
    model = onnx.load(str(art / "model.onnx"))
    model.opset_import[0].version = 99  # beyond what this ONNX Runtime knows
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(UserError, match="opset 99"):
        check_runnable(tmp_path / "m.onnx", 99)


@pytest.mark.parametrize("attention", ["ort", "onnx", "model"])
def test_attention_variants_match_pytorch(tiny_run, tmp_path, attention):
    from training.checkpoint import load_run

    from export.onnx_graph import OnnxGPT, example_inputs, export_onnx
    model = load_run(tiny_run)[0]
    export_onnx(model, tmp_path / "m.onnx", attention=attention)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    inputs = example_inputs(model, batch=3, seq=4, past=5)
    inputs[1][0, :3] = 0  # left padding in the first row
    got = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)})
    with torch.no_grad():
        want = OnnxGPT(model, attention="model")(*inputs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4)
