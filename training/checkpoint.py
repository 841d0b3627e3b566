"""The run dir's checkpoint: everything needed to resume, sample, explain or export.

    save_checkpoint(run_dir / "ckpt.pt", state)              # atomic
    ckpt = load_checkpoint(run_dir / "ckpt.pt")              # UserError if missing/corrupt
    model, config, tok = load_run(run_dir, device="cpu")     # eval-mode model + tokenizer

`ckpt.pt` holds the best model by validation loss (what later stages use); `last.pt` holds
the latest evaluation's state, which `--resume` continues from. Both carry the model
config, so nothing else is needed to rebuild the model.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer

from training.cli import UserError, atomic_write
from training.model import build_model
from training.model_config import ModelConfig

CKPT_NAME, LAST_NAME, TOKENIZER_NAME = "ckpt.pt", "last.pt", "tokenizer.json"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; train one first (make train) or point --run at a run dir")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds for a torn or foreign file
        raise UserError(f"checkpoint {path} is corrupt or not a shelley checkpoint "
                        f"({type(e).__name__}); retrain, or restore it from a copy") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise UserError(f"checkpoint {path} is not a shelley checkpoint (no model_config/model)")
    return ckpt


def model_config_of(ckpt: dict, path: str | os.PathLike = "checkpoint") -> ModelConfig:
    try:
        return ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{path} has an unusable model config: {e}") from None


def load_tokenizer(run_dir: str | os.PathLike) -> Tokenizer:
    path = Path(run_dir) / TOKENIZER_NAME
    if not path.is_file():
        raise UserError(f"no {TOKENIZER_NAME} in {run_dir}; is it a training run dir?")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(f"{path} is not a valid tokenizer file ({e}); retrain or restore it") from None


def load_run(run_dir: str | os.PathLike, device: str = "cpu", name: str = CKPT_NAME):
    """(model in eval mode, ModelConfig, Tokenizer) from a training run dir."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} does not exist; train first (make train) or fix --run")
    ckpt = load_checkpoint(run_dir / name)
    config = model_config_of(ckpt, run_dir / name)
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{run_dir / name} does not match its own model config: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return model, config, load_tokenizer(run_dir)
