"""Which published layout a run's model has: what the transformers and GGUF exports map onto.

    layout = layout_of(mc)                       # "gpt2", "qwen3" or None (core.model_config.ModelConfig)
    model, mc, tok, layout = load_layout_run(run_dir, "the transformers export")

Why: `--format hf` and `--format gguf` do not write our model, they write someone else's
(transformers' GPT2LMHeadModel / Qwen3ForCausalLM, llama.cpp's gpt2 / qwen3), so each
needs to know which one a run's weights fit. That is decided here, once, for both: GPT-2's
block with biases is "gpt2"; the modern block (training/qwen3.py) with its own norm, MLP and
QK-norm is "qwen3". The bigram, a GPT without biases and the ladder's rungs between the two
blocks (bench/) fit neither, and are refused in one line before anything is written.
"""
from __future__ import annotations

from pathlib import Path

from core.errors import UserError
from core.model_config import ModelConfig

LAYOUTS = ("gpt2", "qwen3")


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


def load_layout_run(run_dir: str | Path, export: str):
    """A run's (model, ModelConfig, tokenizer, layout); `export` names the format in the refusal."""
    from training.checkpoint import load_run

    run_dir = Path(run_dir)
    model, mc, tok = load_run(run_dir)
    layout = layout_of(mc)
    if layout is None:
        raise UserError(f"{run_dir} holds {_what(mc)}; {export} takes GPT-2's block (--model gpt, with "
                        f"biases) or Qwen3's (--model qwen3 with RMSNorm, SwiGLU and QK-norm)")
    return model, mc, tok, layout
