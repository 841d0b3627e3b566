"""A run's settings and data, before anything trains: new, resumed (--resume) or fine-tuned
(--init-from).

    tc, model_fields, ckpt, base = prepare_run(flags, resume, dd)    # ckpt: --resume's; base: --init-from's
    data = prepare_data(tc, ckpt is not None, model_fields["block_size"], dd, base)
    data.tok, data.train, data.val, data.char_counts

Kept apart from training/train.py's loop: this decides what the run is (the preset and flags,
or the checkpoint's settings, or the base run's shape and tokenizer) and refuses, in one
line, what cannot be (a different shape on --resume, an --out that already holds a run).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from core.artifact import TOKENIZER_NAME
from core.chat import write_chat
from core.errors import UserError
from core.files import atomic_write, ensure_writable_dir
from training import init_from
from training.chat_form import chat_template
from training.checkpoint import CKPT_NAME, LAST_NAME, load_checkpoint, load_tokenizer, model_config_of
from training.config import MODEL_FIELDS, PRESETS, TrainConfig, resolve
from training.corpus_cache import Corpus, cached_form, cached_ids, cached_tokenizer
from training.data import to_tensors
from training.device import Distributed
from training.tokenizer import char_counts


def prepare_run(flags: dict, resume: bool, dd: Distributed):
    """(TrainConfig, model fields, resume checkpoint or None, --init-from base or None) for a
    new or resumed run."""
    out = Path(flags.get("out", TrainConfig.out))
    if resume:
        path = out / LAST_NAME if (out / LAST_NAME).is_file() else out / CKPT_NAME
        if not path.is_file():
            raise UserError(f"nothing to resume in {out} (no {LAST_NAME} or {CKPT_NAME}); drop --resume to start a new run")
        ckpt = load_checkpoint(path)
        saved = model_config_of(ckpt, path)
        changed = [f"{k}={getattr(saved, k)} in the checkpoint but {flags[k]} asked"
                   for k in MODEL_FIELDS if k in flags and flags[k] != getattr(saved, k)]
        if changed:
            raise UserError(f"cannot resume {out} with a different model shape ({'; '.join(changed)}); "
                            f"drop those flags, or start a new run with another --out")
        settings = {**ckpt["train_config"], **{k: v for k, v in flags.items() if k not in MODEL_FIELDS}}
        return TrainConfig(**settings), {k: v for k, v in saved.to_dict().items() if k != "vocab_size"}, ckpt, None
    preset = flags.get("preset") or ("gpu" if dd.device.type == "cuda" else "cpu-small")
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    model_fields, tc = resolve(flags, preset)
    base = None
    if tc.init_from:                                  # fine-tuning: the base's shape and tokenizer
        base = init_from.load_base(tc.init_from, flags)
        model_fields = init_from.model_fields(base, flags)
        tc = dataclasses.replace(tc, **init_from.tokenizer_settings(base))
    if dd.main:
        if (out / CKPT_NAME).exists() or (out / LAST_NAME).exists():
            raise UserError(f"{out} already holds a run; add --resume to continue it, or pick another --out")
        ensure_writable_dir(out)
    return tc, model_fields, None, base


@dataclass
class Data:
    tok: object                      # tokenizers.Tokenizer
    train: torch.Tensor              # token ids
    val: torch.Tensor
    char_counts: object              # np.ndarray: characters each token id spells (bits per char)


def prepare_data(tc: TrainConfig, resuming: bool, block_size: int, dd: Distributed,
                 base: init_from.Base | None = None) -> Data:
    """The tokenizer (built, the base's for --init-from, or the run's own on --resume) and the
    corpus's ids, from the cache when the corpus and settings were seen before
    (training/corpus_cache.py)."""
    corpus = Corpus(tc.corpus)
    out = Path(tc.out)
    if not resuming and dd.main:
        try:
            tok = base.tok if base else cached_tokenizer(corpus, tc.tokenizer, tc.vocab_size)
        except ValueError as e:
            raise UserError(str(e)) from None
        atomic_write(out / TOKENIZER_NAME, tok.to_str())
        write_chat(out, chat_template(cached_form(corpus)))   # how the corpus writes dialogue (chat_form.py)
    dd.barrier()  # the other ranks read the tokenizer rank 0 just wrote
    tok = load_tokenizer(out)
    train_data, val_data = to_tensors(*cached_ids(corpus, tok), block_size)
    return Data(tok, train_data, val_data, char_counts(tok))
