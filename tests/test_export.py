"""Export: the artifact contract, ONNX Runtime parity with PyTorch, and bad input.

The trained `tiny_run` (tests/conftest.py) is exported once per session; runs with random
weights (make_run) stand in for the odd cases: another model's weights, a bigram, a torn file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

from core.artifact import check_manifest, graph_names
from core.errors import UserError
from core.files import read_json
from core.model_config import ModelConfig
from export.__main__ import main as export_main
from export.onnx_graph import check_runnable
from export.verify import main as verify_main
from export.verify import verify
from training.checkpoint import load_tokenizer, save_checkpoint
from training.model import build_model
from training.tokenizer import build_tokenizer, eos_id

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def make_run(path: Path, seed: int = 0, like: Path | None = None, **overrides) -> Path:
    """A run dir with random weights (shaped like run dir `like`, if given)."""
    path.mkdir(parents=True)
    train_config = {}
    if like is None:
        tok = build_tokenizer("char", [TEXT])
        base = dict(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=2, n_head=2, n_embd=32)
    else:
        tok = load_tokenizer(like)
        ckpt = torch.load(like / "ckpt.pt", weights_only=True)
        base, train_config = ckpt["model_config"], ckpt["train_config"]
    cfg = ModelConfig(**{**base, **overrides})
    torch.manual_seed(seed)
    model = build_model(cfg)
    save_checkpoint(path / "ckpt.pt", {"model_config": cfg.to_dict(), "train_config": train_config,
                                       "model": model.state_dict(), "iter": 0, "best_val_loss": 0.0})
    tok.save(str(path / "tokenizer.json"))
    (path / "summary.json").write_text(json.dumps({"params": 1, "iters": 0}))
    return path


@pytest.fixture(scope="session")
def art(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "tiny"
    assert export_main(["--run", str(tiny_run), "--out", str(out), "--dtype", "fp16", "--quantize", "int8"]) == 0
    return out


def test_artifact_files_and_config(art, tiny_run):
    assert sorted(p.name for p in art.iterdir()) == [
        "chat_template.json", "embed.onnx", "manifest.json", "model.fp16.onnx", "model.int8.onnx", "model.onnx",
        "model_config.json", "tokenizer.json"]
    meta = json.loads((art / "model_config.json").read_text())
    inputs, outputs = graph_names(2)
    derived = meta["derived"]
    assert derived["inputs"] == inputs and derived["outputs"] == outputs
    assert inputs[:5] == ["input_ids", "position_ids", "seqlens_k", "total_sequence_length", "past_key_values.0.key"]
    assert outputs[:3] == ["logits", "present.0.key", "present.0.value"]
    assert meta["files"] == {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    assert (meta["opset"], meta["format_version"]) == (17, 3)
    assert (derived["architecture"], derived["context_length"], derived["window_keep"]) == ("gpt", 32, 24)
    assert meta["model"] == ModelConfig.from_dict(meta["model"]).to_dict()   # embedded whole
    assert meta["eos_token_id"] == eos_id(load_tokenizer(tiny_run))
    assert meta["name"] == tiny_run.name and meta["params"] > 0
    sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == inputs
    assert [o.name for o in sess.get_outputs()] == outputs
    past, present = sess.get_inputs()[4], sess.get_outputs()[1]
    assert past.shape[1:] == present.shape[1:] == [2, 32, 16] and past.type == "tensor(float)"
    assert [sess.get_inputs()[i].type for i in (2, 3)] == ["tensor(int32)", "tensor(int32)"]


def test_checker_passes(art):
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        onnx.checker.check_model(str(art / name), full_check=True)


def test_graph_is_lean(art):
    """What makes decode fast: one GroupQueryAttention a layer over the shared KV buffer."""
    graph = onnx.load(str(art / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == 2  # one per layer
    for node in gqa:
        assert node.input[0] and not node.input[1] and not node.input[2]  # packed q|k|v
        assert node.input[3].startswith("past_key_values.") and node.output[1].startswith("present.")
        assert list(node.input[5:7]) == ["seqlens_k", "total_sequence_length"]
    assert ops.count("FastGelu") == 2
    # no mask subgraph, no cache Concat, and no SkipLayerNormalization (slower on CPU)
    assert not {"Where", "Range", "Not", "Concat", "SkipLayerNormalization"} & set(ops)
    assert len(ops) <= 40, ops
    int8 = [n.op_type for n in onnx.load(str(art / "model.int8.onnx")).graph.node]
    assert "MatMul" not in int8 and int8.count("GroupQueryAttention") == 2


def test_manifest_hashes_match_files(art, tiny_run, tmp_path):
    manifest = json.loads((art / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "embed.onnx",
                                      "model_config.json", "tokenizer.json", "chat_template.json"}
    assert manifest["training"] == json.loads((tiny_run / "summary.json").read_text())
    assert set(manifest["versions"]) == {"torch", "onnx", "onnxruntime"}
    assert check_manifest(art, manifest) == []
    copy = shutil.copytree(art, tmp_path / "copy")
    with open(copy / "tokenizer.json", "a") as f:
        f.write(" ")
    assert check_manifest(copy, manifest) == ["tokenizer.json: size or sha256 does not match manifest.json"]


def test_parity_with_pytorch(art, tiny_run, capsys):
    checks = verify(art, tiny_run)
    names = " | ".join(c.name for c in checks)
    for part in ("prefill, prompt of 1", "prefill, prompt of 32", "decode, 50 steps",
                 "greedy tokens, 200 steps", "slots 1-3", "fp16 file", "int8 bits/char", "int8 top-1"):
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
    assert json.loads((out / "model_config.json").read_text())["files"] == {"fp32": "model.onnx"}
    assert check_manifest(out, read_json(out / "manifest.json")) == []


def bad(argv: list[str], capsys) -> str:
    """Run the CLI as `python -m export` would; return its one error line."""
    from core.errors import run_main
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
    assert "unknown model kind 'rnn'" in bad(["--run", str(unknown), "--out", out], capsys)   # a newer run's kind
    assert "already exists; pass --force" in bad(["--run", str(tiny_run), "--out", str(art)], capsys)
    assert "--opset 99 is not supported" in bad(["--run", str(tiny_run), "--out", out, "--opset", "99"], capsys)
    assert not Path(out).exists()


def test_opset_ort_cannot_run(art, tmp_path):
    model = onnx.load(str(art / "model.onnx"))
    model.opset_import[0].version = 99  # beyond what this ONNX Runtime knows
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(UserError, match="opset 99"):
        check_runnable(tmp_path / "m.onnx", 99)


def test_odd_head_size_is_refused(tmp_path, capsys):
    odd = make_run(tmp_path / "odd", n_embd=36, n_head=3)      # head size 12
    assert "multiple of 8" in bad(["--run", str(odd), "--out", str(tmp_path / "out")], capsys)


def test_int8_that_loses_quality_is_not_written(tiny_run, tmp_path, monkeypatch, capsys):
    """A quality check that fails leaves a complete fp32 artifact and says why."""
    import export.quantize as q
    monkeypatch.setattr(q, "MAX_BPC_RATIO", 0.5)     # no int8 model can be that good
    out = tmp_path / "art"
    err = bad(["--run", str(tiny_run), "--out", str(out), "--quantize", "int8"], capsys)
    assert "int8 quality too low" in err and "fp32 artifact" in err
    assert not (out / "model.int8.onnx").exists()
    assert json.loads((out / "model_config.json").read_text())["files"] == {"fp32": "model.onnx"}
    assert check_manifest(out, read_json(out / "manifest.json")) == []
