"""Write a model artifact dir's metadata: model_config.json, then manifest.json (last).

    write_model_config(art, name, config, params, eos_id, opset, files)
    write_manifest(art, training_summary)      # hashes every other file of the dir

The layout, names and checks are serving/artifact.py's (torch-free, shared with the server;
docs/DESIGN.md, "Files between stages"); this module only fills them from training's
ModelConfig and records the tool versions.
"""
from __future__ import annotations

from pathlib import Path

from serving import artifact as contract
from training.model_config import ModelConfig, window_keep


def write_model_config(art: Path, name: str, config: ModelConfig, params: int, eos_id: int,
                       opset: int, files: dict[str, str]) -> contract.ArtifactConfig:
    inputs, outputs = contract.graph_names(config.n_layer)
    card = contract.ArtifactConfig(
        name=name, architecture=config.model, vocab_size=config.vocab_size,
        context_length=config.block_size, n_layer=config.n_layer, n_head=config.n_head,
        head_dim=config.head_dim, params=params, eos_token_id=eos_id,
        window_keep=window_keep(config.block_size), opset=opset, files=files,
        inputs=inputs, outputs=outputs, model_config=config.to_dict())
    contract.atomic_write(Path(art) / contract.CONFIG_NAME, card.to_json())
    return card


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def write_manifest(art: Path, training: dict) -> dict:
    return contract.write_manifest(art, versions(), training)
