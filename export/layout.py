"""Which published layout a run's model has, and loading a run only once its config passes.

    layout = layout_of(mc)                       # "gpt2", "qwen3" or None (core.model_config.ModelConfig)
    model, mc, tok, layout = load_layout_run(run_dir, "the transformers export")
    model, mc, tok = load_checked_run(run_dir, refuse)   # refuse(mc) -> a reason, or None

Why: `--format hf` and `--format gguf` do not write our model, they write someone else's
(transformers' GPT2LMHeadModel / Qwen3ForCausalLM, llama.cpp's gpt2 / qwen3), so each
needs to know which one a run's weights fit. That is decided here, once, for both: GPT-2's
block with biases is "gpt2"; the modern block (training/qwen3.py) with its own norm, MLP and
QK-norm is "qwen3". The bigram, a GPT without biases and the ladder's rungs between the two
blocks fit neither, and are refused in one line before a model is built or anything written;
the ONNX export (export/build.py) refuses what has no KV cache through the same loader.
"""
from __future__ import annotations

from pathlib import Path

from collections.abc import Callable

from core.errors import UserError
from core.model_config import ModelConfig
from core.run_dir import CKPT


def layout_of(mc: ModelConfig) -> str | None:
    if mc.model == "gpt" and mc.bias:
        return "gpt2"
    if mc.model == "qwen3" and mc.is_full_qwen3:
        return "qwen3"
    return None


def _what(mc: ModelConfig) -> str:
    if mc.model == "gpt":
        return "a gpt without biases"
    if mc.model == "qwen3":
        return f"a qwen3 ladder rung (norm {mc.norm}, mlp {mc.mlp}, qk_norm {mc.qk_norm})"
    return f"a {mc.model!r} model"


def load_checked_run(run_dir: str | Path, refuse: Callable[[ModelConfig], str | None]):
    """A run's (model, ModelConfig, tokenizer), refused in one line ("<ckpt> holds <reason>")
    when `refuse(config)` gives a reason; the config is read from the checkpoint and checked
    before the model is built."""
    from training.checkpoint import load_checkpoint, model_config_of, run_from_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} does not exist; train first (make train) or fix --run")
    ckpt = load_checkpoint(run_dir / CKPT)          # read once: what is checked is what gets built
    reason = refuse(model_config_of(ckpt, run_dir / CKPT))
    if reason:
        raise UserError(f"{run_dir / CKPT} holds {reason}")
    return run_from_checkpoint(run_dir, ckpt)


def load_layout_run(run_dir: str | Path, export: str):
    """A run's (model, ModelConfig, tokenizer, layout); `export` names the format in the refusal."""
    def refuse(mc: ModelConfig) -> str | None:
        if layout_of(mc) is None:
            return (f"{_what(mc)}; {export} takes GPT-2's block (--model gpt, with biases) or "
                    f"Qwen3's (--model qwen3 with RMSNorm, SwiGLU and QK-norm)")
        return None

    model, mc, tok = load_checked_run(run_dir, refuse)
    return model, mc, tok, layout_of(mc)
