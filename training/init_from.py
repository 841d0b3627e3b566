"""Fine-tuning: a new run that starts from another run's weights and tokenizer.

    python -m training.train --init-from runs/shakespeare --corpus frankenstein --out runs/shelley
    base = load_base("runs/shakespeare", flags)   # UserError (exit 2) if it cannot carry over
    base.config, base.tok, base.state, base.record   # shape, tokenizer, best weights, for summary.json

The tokenizer comes with the weights: the embedding's rows are the base's token ids, and a
tokenizer trained on the new text would give those ids other meanings. Both tokenizers
spell any text (byte-level BPE; the char tokenizer falls back to UTF-8 bytes for a
character it never saw), so new text always encodes, if less compactly. The shape is the
base's too, so flags that would change it (--n-layer, --block-size, --model, ..., and
--tokenizer, --vocab-size) are refused with one line rather than ignored; --dropout may
differ (it has no weights). Everything else is a new run's: the optimizer starts empty at
step 0 with the new run's schedule, and the base is recorded in the checkpoint and
summary.json (`init_from`: the run dir, its corpus, steps and best validation loss).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from core.errors import UserError
from core.model_config import ModelConfig
from training.checkpoint import CKPT_NAME, load_checkpoint, load_tokenizer, model_config_of
from training.config import MODEL_FIELDS

FREE = ("dropout",)      # shape fields a fine-tune may change: they hold no weights


@dataclass
class Base:
    config: ModelConfig
    tok: Tokenizer
    state: dict                      # the base's best weights (ckpt.pt)
    train_config: dict               # the base's TrainConfig, as saved
    record: dict                     # summary.json's init_from


def load_base(run_dir: str, flags: dict) -> Base:
    """The base run's model and tokenizer, or a one-line UserError saying why they cannot
    carry over to a run asked for with `flags` (the flags typed on the command line)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"--init-from {run_dir}: no such run dir; train the base first (make train RUN=...)")
    ckpt = load_checkpoint(path / CKPT_NAME)
    config = model_config_of(ckpt, path / CKPT_NAME)
    tok = load_tokenizer(path)
    if tok.get_vocab_size() != config.vocab_size:
        raise UserError(f"--init-from {run_dir}: its tokenizer.json has {tok.get_vocab_size()} tokens but its "
                        f"model {config.vocab_size}; the run dir is damaged")
    changed = [f"--{k.replace('_', '-')} {flags[k]} (the base has {getattr(config, k)})"
               for k in MODEL_FIELDS if k not in FREE and k in flags and flags[k] != getattr(config, k)]
    saved = ckpt.get("train_config", {})
    changed += [f"--{k.replace('_', '-')} {flags[k]} (the base has {saved[k]})"
                for k in ("tokenizer", "vocab_size") if k in flags and k in saved and flags[k] != saved[k]]
    if changed:
        raise UserError(f"--init-from {run_dir} keeps the base's shape and tokenizer, so it cannot take "
                        f"{'; '.join(changed)}; drop those flags")
    record = {"run": str(path.resolve()), "corpus": saved.get("corpus"), "iters": ckpt.get("iter"),
              "best_val_loss": round(float(ckpt.get("best_val_loss", float("nan"))), 5),
              "tokenizer": saved.get("tokenizer"), "params": sum(t.numel() for t in ckpt["model"].values())}
    return Base(config, tok, ckpt["model"], saved, record)


def model_fields(base: Base, flags: dict) -> dict:
    """The new run's ModelConfig fields (all but vocab_size): the base's, --dropout aside."""
    fields = {k: v for k, v in dataclasses.asdict(base.config).items() if k != "vocab_size"}
    return {**fields, **{k: flags[k] for k in FREE if k in flags}}


def tokenizer_settings(base: Base) -> dict:
    """TrainConfig's tokenizer fields, as the base trained them (so the new run's say the truth)."""
    return {k: base.train_config[k] for k in ("tokenizer", "vocab_size") if k in base.train_config}
