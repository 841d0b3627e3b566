"""Write a model artifact dir's metadata: model_config.json, then manifest.json (last).

    card = artifact_config(name, config, params, eos_id, opset, files, kv_dtype)   # in memory
    write_model_config(art, card)              # model_config.json, once, when every file is made
    write_manifest(art, training_summary)      # hashes every other file of the dir

The layout, names and checks are core/artifact.py's (torch-free, shared with the server;
docs/DESIGN.md, "Files between stages"); this module only fills them from a training run
and records the tool versions.
"""
from __future__ import annotations

from pathlib import Path

from core import artifact as contract
from core.files import atomic_write
from core.model_config import ModelConfig


def artifact_config(name: str, config: ModelConfig, params: int, eos_id: int, opset: int,
                    files: dict[str, str], kv_dtype: str = "fp32") -> contract.ArtifactConfig:
    return contract.ArtifactConfig(name=name, params=params, eos_token_id=eos_id, opset=opset,
                                   files=files, model=config, kv_dtype=kv_dtype)


def write_model_config(art: Path, card: contract.ArtifactConfig) -> None:
    atomic_write(Path(art) / contract.CONFIG_NAME, card.to_json())


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def write_manifest(art: Path, training: dict) -> dict:
    return contract.write_manifest(art, versions(), training)
