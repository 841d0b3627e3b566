"""Test helper for the serving tests: the artifact dir of conftest's `tiny_run`.

The artifact comes from `python -m export` when that package is present, else from a
minimal stand-in exporter that writes the same contract (COMMON.md "Model artifact dir").
Tests may use torch; serving/ never does.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from training.model import count_params
from training.model_config import window_keep
from training.tokenizer import eos_id


def make_artifact(run: Path, out: Path) -> Path:
    try:
        from export.__main__ import main as export_main
    except ImportError:
        _standin_export(run, out)
    else:
        export_main(["--run", str(run), "--out", str(out), "--force"])
    return out


def _standin_export(run: Path, out: Path) -> None:
    """Until `export` lands: the same graph names, config and manifest, from the checkpoint."""
    import onnxruntime
    from training.checkpoint import load_run

    model, cfg, tok = load_run(run)
    out.mkdir(parents=True, exist_ok=True)

    class Flat(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            kv = tuple((past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2))
            logits, _, present = self.m(input_ids, past_kv=kv, position_ids=position_ids,
                                        attention_mask=attention_mask)
            return (logits, *(t for pair in present for t in pair))

    L = cfg.n_layer
    past_names = [f"past_key_values.{i}.{s}" for i in range(L) for s in ("key", "value")]
    present_names = [f"present.{i}.{s}" for i in range(L) for s in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids", *past_names]
    outputs = ["logits", *present_names]
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "total"}, "logits": {0: "batch", 1: "sequence"}}
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    B, T, P = 2, 3, 2
    example = (torch.randint(0, cfg.vocab_size, (B, T)), torch.ones(B, P + T, dtype=torch.long),
               torch.arange(P, P + T)[None].expand(B, T).contiguous(),
               *[torch.randn(B, cfg.n_head, P, cfg.head_dim) for _ in past_names])
    torch.onnx.export(Flat(model).eval(), example, str(out / "model.onnx"), dynamo=False,
                      opset_version=17, input_names=inputs, output_names=outputs, dynamic_axes=axes)
    (out / "tokenizer.json").write_bytes((run / "tokenizer.json").read_bytes())
    eos = eos_id(tok)
    config = {"name": run.name, "architecture": "gpt", "model_config": cfg.to_dict(),
              "vocab_size": cfg.vocab_size, "context_length": cfg.block_size, "n_layer": L,
              "n_head": cfg.n_head, "head_dim": cfg.head_dim, "params": count_params(model),
              "eos_token_id": eos, "pad_token_id": eos, "window_keep": window_keep(cfg.block_size),
              "onnx": {"fp32": "model.onnx", "fp16": None, "opset": 17, "inputs": inputs,
                       "outputs": outputs, "past_key": "past_key_values.{i}.key",
                       "past_value": "past_key_values.{i}.value",
                       "present_key": "present.{i}.key", "present_value": "present.{i}.value"}}
    (out / "model_config.json").write_text(json.dumps(config, indent=2))
    files = {p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
             for p in sorted(out.iterdir()) if p.name != "manifest.json"}
    manifest = {"format_version": 1, "files": files,
                "versions": {"torch": torch.__version__, "onnx": "", "onnxruntime": onnxruntime.__version__},
                "training": {}, "created_utc": "1970-01-01T00:00:00+00:00"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def cached_artifact(tiny_run: Path, tmp_path_factory) -> Path:
    """The artifact of conftest's `tiny_run`, exported once per session for every module."""
    art = tmp_path_factory.getbasetemp() / "serving-artifact"
    if not (art / "manifest.json").is_file():
        make_artifact(tiny_run, art)
    return art
