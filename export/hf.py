"""Export a training run in Hugging Face transformers' format (GPT-2 or Qwen3).

    python -m export --format hf --run runs/default --out hf/default

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("hf/default")     # GPT2LMHeadModel or Qwen3ForCausalLM
    tok = AutoTokenizer.from_pretrained("hf/default")              # PreTrainedTokenizerFast

A stock class loads the directory unchanged, so the run's layout (export/layout.py) picks it.
GPT-2's block (`--model gpt`): the weights only need renaming, and transposing where GPT-2
keeps a `Conv1D` (weight stored (in, out), the transpose of `nn.Linear`). The modern block
(`--model qwen3`, training/qwen3.py) already uses Qwen3's names, so its weights go in as they
are under `model.`; its config carries the grouped KV heads, head size, rotary base and norm
epsilon. A tied output embedding is not stored (`tie_word_embeddings`). Writes `config.json`,
`generation_config.json`, `model.safetensors`, `tokenizer.json` (the run's own file),
`tokenizer_config.json` (with the run's `chat_template`, so `apply_chat_template` renders
what the server renders) and `special_tokens_map.json`. Needs torch and safetensors, not
transformers.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from core.artifact import TOKENIZER_NAME
from core.files import atomic_write, prepare_out_dir
from core.model_config import ModelConfig
from export.chat import add_chat_flags, resolve_chat
from export.layout import layout_of, load_layout_run
from training.tokenizer import EOS, eos_id

HF_FILES = ("config.json", "generation_config.json", "model.safetensors", TOKENIZER_NAME,
            "tokenizer_config.json", "special_tokens_map.json")
SPECIAL_TOKENS = {"bos_token": EOS, "eos_token": EOS, "pad_token": EOS}   # GPT-2 uses one for all
# ours -> GPT-2's name inside transformer.h.{i}; True where GPT-2 stores a Conv1D
BLOCK_NAMES = {"ln_1": ("ln_1", False), "attn.qkv": ("attn.c_attn", True),
               "attn.proj": ("attn.c_proj", True), "ln_2": ("ln_2", False),
               "mlp.fc": ("mlp.c_fc", True), "mlp.proj": ("mlp.c_proj", True)}


def gpt2_state_dict(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Our GPT's state_dict under GPT2LMHeadModel's names (lm_head left out: it is tied)."""
    sd = {f"transformer.{name}.{kind}": state[f"{name}.{kind}"]
          for name in ("wte", "wpe", "ln_f") for kind in ("weight", "bias") if f"{name}.{kind}" in state}
    for i in range(n_layer):
        for ours, (theirs, conv1d) in BLOCK_NAMES.items():
            w = state[f"blocks.{i}.{ours}.weight"]
            sd[f"transformer.h.{i}.{theirs}.weight"] = w.t() if conv1d else w
            sd[f"transformer.h.{i}.{theirs}.bias"] = state[f"blocks.{i}.{ours}.bias"]
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}


def gpt2_config(mc: ModelConfig, eos: int) -> dict:
    """config.json: GPT-2 with our shape; tanh GELU is GPT-2's `gelu_new`."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": mc.vocab_size, "n_positions": mc.block_size,
            "n_embd": mc.n_embd, "n_layer": mc.n_layer, "n_head": mc.n_head,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
            "bos_token_id": eos, "eos_token_id": eos}


def qwen3_state_dict(state: dict[str, torch.Tensor], mc: ModelConfig) -> dict[str, torch.Tensor]:
    """Our qwen3's state_dict under Qwen3ForCausalLM's names: the same names under `model.`,
    and `lm_head` beside it when untied. Only the weights Qwen3 has (nothing derived)."""
    names = [n for n in state if n.split(".")[0] in ("embed_tokens", "layers", "norm")]
    sd = {f"model.{n}": state[n] for n in names}
    if not mc.tie_embeddings:
        sd["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}


def qwen3_config(mc: ModelConfig, eos: int) -> dict:
    """config.json: Qwen3 with our shape. Rotary's base is written both ways transformers has
    read it (`rope_parameters` from 5.0, `rope_theta` before); no sliding window."""
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "vocab_size": mc.vocab_size, "max_position_embeddings": mc.block_size,
            "hidden_size": mc.n_embd, "intermediate_size": mc.ffn_hidden,
            "num_hidden_layers": mc.n_layer, "num_attention_heads": mc.n_head,
            "num_key_value_heads": mc.kv_heads, "head_dim": mc.head_dim, "hidden_act": "silu",
            "rms_norm_eps": mc.norm_eps, "rope_theta": mc.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": mc.rope_theta},
            "attention_bias": False, "attention_dropout": 0.0, "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": mc.n_layer, "initializer_range": 0.02,
            "tie_word_embeddings": mc.tie_embeddings, "use_cache": True, "dtype": "float32",
            "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}


def tokenizer_config(mc: ModelConfig, chat_template: str) -> dict:
    """What AutoTokenizer needs to load tokenizer.json as a fast tokenizer, unchanged, and
    the chat template. No clean-up of spaces: decode must give back exactly the text the ids spell."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": mc.block_size,
            **SPECIAL_TOKENS, "clean_up_tokenization_spaces": False, "add_prefix_space": False,
            "chat_template": chat_template}


def save_model(model, out: Path, eos: int) -> None:
    """config.json, generation_config.json and model.safetensors in the layout of the model's
    config (export/layout.py): the model without its tokenizer (what AutoModelForCausalLM's
    from_pretrained reads; the benches use this alone)."""
    from safetensors.torch import save_file

    mc = model.config
    if layout_of(mc) == "qwen3":
        weights, config = qwen3_state_dict(model.state_dict(), mc), qwen3_config(mc, eos)
    else:
        weights, config = gpt2_state_dict(model.state_dict(), mc.n_layer), gpt2_config(mc, eos)
    tmp = out / ".model.safetensors.tmp"
    save_file(weights, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    generation = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}
    for name, content in (("config.json", config), ("generation_config.json", generation)):
        atomic_write(out / name, json.dumps(content, indent=2) + "\n")


def export_hf(run_dir: str | Path, out: str | Path, force: bool = False, chat_template: str | None = None,
              chat_stop: list[str] | None = None) -> list[Path]:
    """Write the transformers directory for a run's ckpt.pt; returns the files written."""
    run_dir, out = Path(run_dir), Path(out)
    model, mc, tok, _ = load_layout_run(run_dir, "the transformers export")
    chat = resolve_chat(run_dir, chat_template, chat_stop)
    prepare_out_dir(out, force, HF_FILES)
    save_model(model, out, eos_id(tok))
    atomic_write(out / "tokenizer_config.json", json.dumps(tokenizer_config(mc, chat.template), indent=2) + "\n")
    atomic_write(out / "special_tokens_map.json", json.dumps(SPECIAL_TOKENS, indent=2) + "\n")
    shutil.copyfile(run_dir / TOKENIZER_NAME, out / TOKENIZER_NAME)
    return [out / name for name in HF_FILES]


def main(argv: list[str] | None = None) -> int:
    """`python -m export --format hf ...` (export/__main__.py hands over the other flags)."""
    p = argparse.ArgumentParser(prog="python -m export --format hf", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="training run dir (ckpt.pt, tokenizer.json)")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing directory")
    add_chat_flags(p)
    args = p.parse_args(argv)
    for path in export_hf(args.run, args.out, args.force, args.chat_template, args.chat_stop):
        print(f"{path}  {path.stat().st_size / 1e6:8.2f} MB")
    return 0
