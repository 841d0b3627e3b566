"""Training settings: presets, `TrainConfig`, and the command line derived from both.

    flags = parse_flags(["--preset", "cpu-small", "--lr", "3e-3"])   # only what was typed
    model_fields, tc = resolve(flags, "cpu-small")                   # preset + flags

A preset gives every setting; flags given on the command line override it. There is one
flag per field of `TrainConfig` and per shape field of `ModelConfig` (`--n-layer` for
`n_layer`), so a new setting is a new field, nothing else. The run's `ModelConfig` (the
architecture) and `TrainConfig` (everything else) are saved in the checkpoint, so
`--resume` needs nothing but `--out`.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from core.model_config import MLPS, MODEL_KINDS, NORMS, ModelConfig

PRESETS: dict[str, dict] = {
    # ~1.0M parameters, the modern block (qwen3: rotary, RMSNorm, SwiGLU, QK-norm, 2 KV heads
    # for 4 query heads, tied head), byte-level BPE (2,000 tokens, ~2.6 characters each); ~20-30 s
    # on 2 CPU cores. The default without a GPU. It beat GPT-2's block of the same shape at equal
    # wall time on both corpora bench/ladder.py measures (docs/benchmarks.md "The ladder"); the
    # untied head, the ladder's last rung, came out even for 25% more parameters, so it stays tied.
    "cpu-small": dict(model="qwen3", n_kv_head=2, n_layer=4, n_head=4, n_embd=128, block_size=64,
                      dropout=0.0, tokenizer="bpe", vocab_size=2000, batch_size=48, max_iters=200,
                      optimizer="muon", muon_lr=0.03, muon_momentum=0.85, lr=1.2e-2, min_lr=1.2e-3,
                      warmup_iters=5, eval_interval=25, eval_iters=5),
    # ~10M parameters: nanoGPT's shakespeare-char shape in the modern block (3 KV heads for 6).
    # The default with a GPU.
    "gpu": dict(model="qwen3", n_kv_head=3, n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2,
                batch_size=64, max_iters=5000, lr=1e-3, min_lr=1e-4, warmup_iters=100,
                eval_interval=250, eval_iters=200, optimizer="adamw"),
    # Five minutes on a CPU (--time-budget 300, start-up and evaluations included): the modern
    # block at ~3.5M parameters, which at 60 s already matched cpu-small's shape with half its
    # steps (bench/five_minutes.py --seconds 60, tinyshakespeare: 2.179 against 2.167 bits/char)
    # and has room to use the other four minutes. docs/training.md has its figures.
    "cpu-5min": dict(model="qwen3", n_layer=4, n_head=4, n_kv_head=2, n_embd=256, block_size=128,
                     dropout=0.2, tokenizer="bpe", vocab_size=2000, batch_size=24, optimizer="muon",
                     muon_lr=0.03, muon_momentum=0.85, lr=1.2e-2, min_lr=1.2e-3, warmup_iters=5,
                     eval_interval=200, eval_iters=10, patience=0, sample_tokens=60, time_budget=300),
    # The tutorial's 3.2M-parameter model on Mary Shelley's novel.
    "frankenstein": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, dropout=0.2,
                         batch_size=32, max_iters=5000, lr=6e-4, min_lr=6e-5, warmup_iters=100,
                         eval_interval=250, eval_iters=50, optimizer="adamw", corpus="frankenstein"),
}
# ModelConfig's fields that are flags; vocab_size comes from the tokenizer, and bias stays on
# (GPT-2's layout, which export and the benchmarks rely on).
MODEL_FIELDS = ("model", "n_layer", "n_head", "n_embd", "block_size", "dropout", "n_kv_head",
                "tie_embeddings", "rope_theta", "norm_eps", "norm", "mlp", "qk_norm")
# The fields only the modern block takes (core/model_config.py refuses them for gpt).
BLOCK_FIELDS = ("n_kv_head", "tie_embeddings", "rope_theta", "norm_eps", "norm", "mlp", "qk_norm")


def _opt(default, help: str, choices: tuple | None = None):
    """A TrainConfig field with its flag's help text (and choices)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    out: str = _opt("runs/default", "run dir")
    preset: str = _opt("cpu-small", f"one of {', '.join(PRESETS)} (default: gpu with CUDA, else cpu-small)")
    corpus: str = _opt("shakespeare", "shakespeare, frankenstein, or a path to a .txt file or folder")
    tokenizer: str = _opt("char", "char or bpe", ("char", "bpe"))
    vocab_size: int = _opt(2000, "BPE vocabulary size")
    batch_size: int = _opt(12, "sequences per step (per process)")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    max_iters: int = _opt(2000, "optimizer steps (not read with --time-budget)")
    time_budget: float = _opt(0.0, "seconds the whole run may take, start-up and the final evaluation "
                              "included; the lr decays by time and --max-iters is not read; 0 = off")
    init_from: str = _opt("", "a run dir whose best weights and tokenizer this new run starts from "
                          "(fine-tuning on --corpus); the shape is the base's")
    optimizer: str = _opt("adamw", "muon: Muon for the blocks' weight matrices, AdamW for the rest; "
                          "adamw: AdamW for all", ("adamw", "muon"))
    lr: float = _opt(1e-3, "peak AdamW learning rate")
    muon_lr: float = _opt(0.02, "peak Muon learning rate (--optimizer muon)")
    muon_momentum: float = _opt(0.95, "Muon's Nesterov momentum (--optimizer muon)")
    min_lr: float = _opt(1e-4, "AdamW learning rate at the end (Muon's ends at the same fraction of its peak)")
    warmup_iters: int = _opt(100, "linear warmup steps")
    weight_decay: float = _opt(0.1, "AdamW weight decay of matrices and embeddings")
    grad_clip: float = _opt(1.0, "clip the gradient norm to this; 0 = off")
    eval_interval: int = _opt(250, "steps between evaluations")
    eval_iters: int = _opt(20, "validation batches per evaluation")
    patience: int = _opt(5, "evaluations without a better val loss before stopping; 0 = never")
    device: str = _opt("auto", "auto: cuda if available", ("auto", "cpu", "cuda"))
    precision: str = _opt("auto", "bf16 autocast (weights stay fp32); auto = bf16 where the hardware "
                          "has it (CUDA, AVX512-BF16/AMX CPUs)", ("auto", "fp32", "bf16"))
    threads: int = _opt(0, "CPU threads, 0 = one per core this process may use (one CPU process "
                        "without dropout: each trains a slice of every batch; else torch's threads)")
    compile: bool = _opt(False, "torch.compile the model")
    seed: int = _opt(1337, "seed of the initial weights and the batches")
    sample_tokens: int = _opt(120, "tokens of the sample printed at each evaluation; 0 = none")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MODEL_HELP = {"model": "gpt (GPT-2's block), qwen3 (the modern block: rotary, RMSNorm, SwiGLU, "
                       "grouped KV heads, QK-norm; training/qwen3.py) or bigram",
              "n_layer": "transformer blocks", "n_head": "attention heads",
              "n_embd": "width", "block_size": "context length in tokens", "dropout": "dropout rate",
              "n_kv_head": "qwen3: key/value heads, a divisor of --n-head; 0 = n_head",
              "tie_embeddings": "qwen3: the output layer reuses the token embedding (--no-tie-embeddings: untied)",
              "rope_theta": "qwen3: rotary base", "norm_eps": "qwen3: the norms' epsilon",
              "norm": "qwen3 ladder: rms, or layer (GPT-2's LayerNorm, no bias)",
              "mlp": "qwen3 ladder: swiglu, or relu2 / gelu (a plain 4x MLP)",
              "qk_norm": "qwen3 ladder: RMSNorm each head's q and k (--no-qk-norm: off)"}
MODEL_CHOICES = {"model": MODEL_KINDS, "norm": NORMS, "mlp": MLPS}


def _add_flag(p: argparse.ArgumentParser, f: dataclasses.Field, help: str, choices=None) -> None:
    flag = "--" + f.name.replace("_", "-")
    # default=None everywhere: a flag the user did not give must not override the preset.
    if f.type == "bool" and f.default is True:     # a switch that is on: --x / --no-x
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"{help} (default on)")
    elif f.type == "bool":
        p.add_argument(flag, action="store_true", default=None, help=help)
    else:
        kind = {"int": int, "float": float, "str": str}[f.type]
        preset = PRESETS["cpu-small"]
        shown = f"cpu-small: {preset[f.name]}" if f.name in preset else f"default {f.default}"
        p.add_argument(flag, type=kind, choices=choices, help=f"{help} ({shown})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=(
        "Train a GPT, the modern qwen3 block or the bigram baseline on a corpus. A preset fills every setting; "
        "flags override it."))
    for f in dataclasses.fields(ModelConfig):
        if f.name in MODEL_FIELDS:
            _add_flag(p, f, MODEL_HELP[f.name], MODEL_CHOICES.get(f.name))
    for f in dataclasses.fields(TrainConfig):
        _add_flag(p, f, f.metadata["help"], f.metadata["choices"])
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    return p


def parse_flags(argv: list[str] | None) -> tuple[dict, bool]:
    """(the settings the user actually typed, --resume)."""
    args = vars(build_parser().parse_args(argv))
    return {k: v for k, v in args.items() if v is not None and k != "resume"}, args["resume"]


def resolve(flags: dict, preset: str) -> tuple[dict, TrainConfig]:
    """(model fields, TrainConfig) from a preset overlaid with explicit flags."""
    base = {"model": "gpt", **PRESETS[preset]}
    if flags.get("model", base["model"]) != base["model"]:
        # `--model gpt` on a qwen3 preset keeps the preset's shape and training, not the
        # settings only the preset's block takes (its KV heads, norms, MLP).
        base = {k: v for k, v in base.items() if k not in BLOCK_FIELDS}
    settings = {**base, **flags, "preset": preset}
    model_fields = {k: v for k, v in settings.items() if k in MODEL_FIELDS}
    return model_fields, TrainConfig(**{k: v for k, v in settings.items() if k not in MODEL_FIELDS})
