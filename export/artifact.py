"""The model artifact dir's metadata: model_config.json and manifest.json (with sha256s).

    write_model_config(art, name, config, params, eos_id, opset, has_fp16)
    write_manifest(art, training_summary)      # last: hashes every other file of the dir
    problems = check_manifest(art)             # [] when every hash and size matches

The layout is the contract between export and serving (see docs/DESIGN.md, "Files between
stages"); the server reads the ONNX names from model_config.json instead of rebuilding them.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from training.cli import atomic_write, sha256_file
from training.model_config import ModelConfig, window_keep

from export.onnx_graph import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE, graph_names

FP32_NAME, FP16_NAME = "model.onnx", "model.fp16.onnx"
TOKENIZER_NAME, CONFIG_NAME, MANIFEST_NAME = "tokenizer.json", "model_config.json", "manifest.json"
ARTIFACT_FILES = (FP32_NAME, FP16_NAME, TOKENIZER_NAME, CONFIG_NAME, MANIFEST_NAME)
FORMAT_VERSION = 1


def model_config_dict(name: str, config: ModelConfig, params: int, eos_id: int, opset: int,
                      has_fp16: bool) -> dict:
    inputs, outputs = graph_names(config.n_layer)
    return {
        "name": name, "architecture": config.model, "model_config": config.to_dict(),
        "vocab_size": config.vocab_size, "context_length": config.block_size,
        "n_layer": config.n_layer, "n_head": config.n_head, "head_dim": config.head_dim,
        "params": params, "eos_token_id": eos_id, "pad_token_id": eos_id,
        "window_keep": window_keep(config.block_size),
        "onnx": {"fp32": FP32_NAME, "fp16": FP16_NAME if has_fp16 else None, "opset": opset,
                 "inputs": inputs, "outputs": outputs,
                 "past_key": PAST_KEY, "past_value": PAST_VALUE,
                 "present_key": PRESENT_KEY, "present_value": PRESENT_VALUE},
    }


def write_model_config(art: Path, *args, **kwargs) -> dict:
    d = model_config_dict(*args, **kwargs)
    atomic_write(art / CONFIG_NAME, json.dumps(d, indent=2) + "\n")
    return d


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def write_manifest(art: Path, training: dict) -> dict:
    """Hash every file of `art` except the manifest itself; written last, atomically."""
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(art.iterdir())
             if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")}
    manifest = {"format_version": FORMAT_VERSION, "files": files, "versions": versions(),
                "training": training,
                "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write(art / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_manifest(art: Path) -> list[str]:
    """One line per file whose size or sha256 differs from the manifest (or is missing)."""
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    problems = []
    for name, want in manifest["files"].items():
        p = art / name
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif p.stat().st_size != want["bytes"] or sha256_file(p) != want["sha256"]:
            problems.append(f"{name}: sha256 does not match manifest.json")
    return problems
