"""Training settings: presets, `TrainConfig`, and the command line that fills both.

A preset gives every setting; flags given on the command line override it. The run's
`ModelConfig` (the architecture) and `TrainConfig` (everything else) are saved in the
checkpoint, so `--resume` needs nothing but `--out`.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

PRESETS: dict[str, dict] = {
    # ~0.8M parameters; about two minutes on 2 CPU cores. The default without a GPU.
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0,
                      batch_size=12, max_iters=2000, lr=2e-3, min_lr=2e-4, warmup_iters=100,
                      eval_interval=250, eval_iters=20),
    # ~10.7M parameters: nanoGPT's shakespeare-char shape. The default with a GPU.
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2,
                batch_size=64, max_iters=5000, lr=1e-3, min_lr=1e-4, warmup_iters=100,
                eval_interval=250, eval_iters=200),
    # The tutorial's 3.2M-parameter model on Mary Shelley's novel.
    "frankenstein": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, dropout=0.2,
                         batch_size=32, max_iters=5000, lr=6e-4, min_lr=6e-5, warmup_iters=100,
                         eval_interval=250, eval_iters=50, corpus="frankenstein"),
}
MODEL_FIELDS = ("model", "n_layer", "n_head", "n_embd", "block_size", "dropout")


@dataclass
class TrainConfig:
    out: str = "runs/default"
    preset: str = "cpu-small"
    corpus: str = "shakespeare"
    tokenizer: str = "char"
    vocab_size: int = 2000          # bpe only
    batch_size: int = 12
    grad_accum: int = 1
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    patience: int = 5               # evaluations without a better val loss before stopping; 0 = never
    device: str = "auto"
    precision: str = "auto"         # auto: bf16 autocast where the hardware has bf16 (CUDA, AVX512-BF16/AMX CPUs)
    threads: int = 0                # CPU threads for torch; 0 = torch's default
    compile: bool = False
    seed: int = 1337
    sample_tokens: int = 120        # sample printed at each evaluation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=(
        "Train a GPT (or the bigram baseline) on a corpus. A preset fills every setting; "
        "flags override it."))
    # default=None everywhere: a flag the user did not give must not override the preset.
    p.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default: gpu with CUDA, else cpu-small)")
    p.add_argument("--corpus", help="shakespeare (default), frankenstein, or a path to a .txt file/folder")
    p.add_argument("--tokenizer", choices=["char", "bpe"])
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default 2000)")
    p.add_argument("--model", choices=["gpt", "bigram"])
    for name in ("n-layer", "n-head", "n-embd", "block-size", "batch-size", "grad-accum",
                 "max-iters", "warmup-iters", "eval-interval", "eval-iters", "seed", "patience",
                 "sample-tokens"):
        p.add_argument(f"--{name}", type=int)
    for name in ("dropout", "lr", "min-lr", "weight-decay", "grad-clip"):
        p.add_argument(f"--{name}", type=float)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast (weights stay fp32); auto = bf16 where the hardware has it")
    p.add_argument("--threads", type=int, help="CPU threads (0 = torch's default; 1 is best on a busy machine)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--out", help="run dir (default runs/default)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    return p


def explicit_flags(args: argparse.Namespace) -> dict:
    """The settings the user actually typed, with argparse's dashes as underscores."""
    return {k: v for k, v in vars(args).items() if v is not None and k != "resume"}


def resolve(flags: dict, preset: str) -> tuple[dict, TrainConfig]:
    """(model fields, TrainConfig) from a preset overlaid with explicit flags."""
    settings = {"model": "gpt", **PRESETS[preset], **flags, "preset": preset}
    model_fields = {k: settings.pop(k) for k in MODEL_FIELDS if k in settings}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return model_fields, TrainConfig(**{k: v for k, v in settings.items() if k in known})
