"""The run dir's checkpoint: everything needed to resume, sample, explain or export.

    state = training_state(model, optimizers, mc, tc, progress, gen)   # the one layout
    save_checkpoint(run_dir / "last.pt", state)              # atomic
    ckpt = load_checkpoint(run_dir / "last.pt")              # UserError if missing/corrupt
    progress = restore_training_state(ckpt, model, optimizers, gen)    # --resume
    model, config, tok = load_run(run_dir, device="cpu")     # eval-mode model + tokenizer

`ckpt.pt` holds the best model by validation loss (what later stages use); `last.pt` holds
the latest evaluation's state, which `--resume` continues from. Both carry the model
config, so nothing else is needed to rebuild the model. Layout: format_version,
model_config, train_config, model (state_dict), optimizer (a list: one state_dict per
optimizer), iter, best_val_loss, stale_evals, elapsed_s, budget_used_s, budget_start_s,
eval_cost_s (training/budget.py), rng (torch, data, python, cuda), init_from (a fine-tune's
base, training/init_from.py).
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from core.artifact import TOKENIZER_NAME
from core.errors import UserError
from core.files import atomic_write
from core.model_config import ModelConfig
from core.run_dir import CKPT as CKPT_NAME
from core.run_dir import LAST as LAST_NAME
from training.model import build_model

FORMAT_VERSION = 2   # 2: "optimizer" is a list (Muon + AdamW); 1 held one AdamW state_dict


@dataclass
class Progress:
    """Where a run stands: saved with every checkpoint, restored by --resume."""
    iter: int = 0
    best_val_loss: float = math.inf
    stale_evals: int = 0             # evaluations since the val loss last improved
    elapsed_s: float = 0.0           # seconds of training steps (no start-up, no evaluations)
    budget_used_s: float = 0.0       # the run's clock when this checkpoint was written (training/budget.py)
    budget_start_s: float = -1.0     # the run's clock at its first step: the lr schedule's time origin
    eval_cost_s: float = 0.0         # the slowest evaluation (with its checkpoint) so far


def rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model, optimizers, mc: ModelConfig, tc, progress: Progress,
                   gen: torch.Generator, init_from: dict | None = None) -> dict:
    """The checkpoint's contents; `model` is the bare module (not compiled, not DDP);
    `init_from`: the base run a fine-tune started from (training/init_from.py)."""
    return {"model_config": mc.to_dict(), "train_config": tc.to_dict(), "model": model.state_dict(),
            "optimizer": [opt.state_dict() for opt in optimizers], **dataclasses.asdict(progress),
            "rng": rng_state(gen), **({"init_from": init_from} if init_from else {})}


def restore_training_state(ckpt: dict, model, optimizers, gen: torch.Generator) -> Progress:
    """Load what training_state saved into the model, optimizers and batch generator."""
    model.load_state_dict(ckpt["model"])
    states = ckpt["optimizer"] if isinstance(ckpt["optimizer"], list) else [ckpt["optimizer"]]
    if len(states) != len(optimizers):
        raise UserError(f"the checkpoint has {len(states)} optimizer state(s), this run {len(optimizers)}; "
                        f"resume with the --optimizer it was trained with")
    for opt, state in zip(optimizers, states):
        opt.load_state_dict(state)
    restore_rng(ckpt["rng"], gen)
    return Progress(**{f.name: ckpt.get(f.name, f.default) for f in dataclasses.fields(Progress)})


def serialize_checkpoint(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    return buf.getvalue()


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    atomic_write(path, serialize_checkpoint(state))


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
    return run_from_checkpoint(run_dir, load_checkpoint(run_dir / name), device, name)


def run_from_checkpoint(run_dir: str | os.PathLike, ckpt: dict, device: str = "cpu", name: str = CKPT_NAME):
    """load_run's result from a checkpoint already loaded (so a caller that looks inside it
    first does not read the file twice)."""
    run_dir = Path(run_dir)
    config = model_config_of(ckpt, run_dir / name)
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{run_dir / name} does not match its own model config: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return model, config, load_tokenizer(run_dir)
