"""Export a training run as GGUF, the file llama.cpp and Ollama run, with an Ollama Modelfile.

    python -m export --format gguf --run runs/default --out gguf/default [--gguf-type f32|f16|q8_0]
    llama-server -m gguf/default/model.gguf --jinja     # llama.cpp: completions, and chats in the run's template
    ollama create shelley -f gguf/default/Modelfile && ollama run shelley "Good morrow."   # Ollama

Why: most people run small models locally in llama.cpp or Ollama, and both read one GGUF
file. It is written with the `gguf` package (llama.cpp's own Python writer), not llama.cpp's
converter, which neither knows our config nor recognises our vocabulary. The run's layout
(export/layout.py) picks llama.cpp's architecture. GPT-2's block is `gpt2`: learned
positions, per-block LayerNorms, fused QKV, tanh-GELU MLP. The modern block (training/qwen3.py)
is `qwen3`: RMSNorms, separate q, k, v with grouped KV heads (`head_count_kv`), QK-norm,
SwiGLU; rotary is computed by llama.cpp from `rope.freq_base`, and it rotates q and k as
NeoX does (halves, not interleaved pairs), as our block does, so q and k are not permuted
(llama.cpp's `llama` architecture rotates pairs: its converter permutes them). `nn.Linear`
keeps its weight as (out, in), which is the row order GGUF wants, so nothing is transposed;
a tied output layer is not stored (llama.cpp reuses `token_embd.weight` when
`output.weight` is absent). `--gguf-type`: f32; f16; q8_0 (2-D weights whose rows are a
multiple of 32 wide, else f32). Norms and biases stay f32. The tokenizer's form is
export/gguf_vocab.py's. `make gguf-test` runs the file in a real llama-server (tests/gguf_check.py).

The chat template is chosen as for the other formats (export/chat.py: the run's, or
`--chat-template FILE` and `--chat-stop STR`): its Jinja source becomes
`tokenizer.chat_template` (`llama-server --jinja` renders chats with it), and the Modelfile
gets the same format as an Ollama Go template (training/chat_form.py's `ollama_template`,
written from the same parts) and the chat's stop strings before end-of-text. A template
from `--chat-template` has no Go twin: the Modelfile stays plain completion (`{{ .Prompt }}`,
stop at end-of-text), with a warning.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.files import atomic_write, prepare_out_dir
from core.model_config import ModelConfig
from export.chat import add_chat_flags, resolve_chat
from export.layout import layout_of
from training.tokenizer import EOS

GGUF_NAME, MODELFILE_NAME = "model.gguf", "Modelfile"
GGUF_FILES = (GGUF_NAME, MODELFILE_NAME)
GGUF_TYPES = ("f32", "f16", "q8_0")
LAYER_NORM_EPS = 1e-5                  # training/model.py's LayerNorms
DEFAULT_TEMPERATURE = 0.8              # training.sample's default
# ours -> llama.cpp's name inside blk.{i}, per layout (export/layout.py)
BLOCK_TENSORS = {
    "gpt2": {f"{ours}.{kind}": f"{theirs}.{kind}" for kind in ("weight", "bias") for ours, theirs in (
        ("ln_1", "attn_norm"), ("attn.qkv", "attn_qkv"), ("attn.proj", "attn_output"),
        ("ln_2", "ffn_norm"), ("mlp.fc", "ffn_up"), ("mlp.proj", "ffn_down"))},
    "qwen3": {f"{ours}.weight": f"{theirs}.weight" for ours, theirs in (
        ("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"), ("self_attn.k_norm", "attn_k_norm"),
        ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"))}}
BLOCK_PREFIX = {"gpt2": "blocks", "qwen3": "layers"}
TOP_TENSORS = {
    "gpt2": {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
             "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"},
    "qwen3": {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}}


def gguf_tensor_names(mc: ModelConfig) -> dict[str, str]:
    """Our state_dict's names -> llama.cpp's, for mc's layout (a tied lm_head left out)."""
    layout = layout_of(mc)
    names = dict(TOP_TENSORS[layout])
    if layout == "qwen3" and not mc.tie_embeddings:
        names["lm_head.weight"] = "output.weight"
    for i in range(mc.n_layer):
        for ours, theirs in BLOCK_TENSORS[layout].items():
            names[f"{BLOCK_PREFIX[layout]}.{i}.{ours}"] = f"blk.{i}.{theirs}"
    return names


def write_shape(w, mc: ModelConfig, layout: str) -> None:
    """The architecture's hyperparameters, as llama.cpp's loader reads them (llama-model.cpp)."""
    w.add_context_length(mc.block_size)
    w.add_embedding_length(mc.n_embd)
    w.add_block_count(mc.n_layer)
    w.add_head_count(mc.n_head)
    if layout == "gpt2":
        w.add_feed_forward_length(4 * mc.n_embd)
        w.add_layer_norm_eps(LAYER_NORM_EPS)
        return
    w.add_feed_forward_length(mc.ffn_hidden)
    w.add_head_count_kv(mc.kv_heads)
    w.add_key_length(mc.head_dim)
    w.add_value_length(mc.head_dim)
    w.add_rope_dimension_count(mc.head_dim)       # every dimension rotates
    w.add_rope_freq_base(mc.rope_theta)
    w.add_layer_norm_rms_eps(mc.norm_eps)


def encode_tensor(array: np.ndarray, gguf_type: str):
    """(data, raw_dtype or None) for GGUFWriter.add_tensor: 1-D tensors always f32."""
    from gguf import GGMLQuantizationType, quants

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim < 2 or gguf_type == "f32":
        return array, None
    if gguf_type == "f16":
        return array.astype(np.float16), None
    if array.shape[-1] % 32:           # q8_0 packs rows in blocks of 32
        return array, None
    return quants.quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


def write_gguf(path: Path, state: dict, mc: ModelConfig, vocab, gguf_type: str = "f32",
               name: str = "shelley", chat_template: str | None = None) -> None:
    """One GGUF file for a model's state_dict (numpy or torch tensors) in llama.cpp's architecture
    for mc's layout, and its GGUFVocab, written to a temp file and renamed into place."""
    import gguf

    layout = layout_of(mc)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    tmp = path.parent / f".{path.name}.tmp"
    w = gguf.GGUFWriter(tmp, arch=layout)
    try:
        w.add_name(name)
        w.add_file_type(int(file_type))
        if gguf_type == "q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_shape(w, mc, layout)
        vocab.write(w)
        if chat_template is not None:
            w.add_chat_template(chat_template)
        for ours, theirs in gguf_tensor_names(mc).items():
            t = state[ours]
            data, raw = encode_tensor(t.detach().cpu().numpy() if hasattr(t, "detach") else t, gguf_type)
            w.add_tensor(theirs, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        w.close()                      # a no-op once closed
        tmp.unlink(missing_ok=True)


def modelfile_value(value: str) -> str:
    """A value as Ollama's Modelfile parser reads it back unchanged: in triple quotes, which
    may span lines. That parser has no escapes and drops unprintable characters."""
    if '"""' in value or any(not (c.isprintable() or c in "\n\t") for c in value):
        raise ValueError(f"{value!r} cannot be written in a Modelfile (no escapes: no triple quotes, "
                         f"no unprintable characters)")
    return f'"""{value}"""'


def modelfile_text(mc: ModelConfig, template: str | None = None, stop: Sequence[str] = (EOS,),
                   temperature: float = DEFAULT_TEMPERATURE) -> str:
    """The Ollama Modelfile beside model.gguf: plain completion unless `template` (Ollama's
    Go template syntax) is given. num_ctx is the trained context: GPT-2's learned positions
    end there, and rotary was never trained past it."""
    lines = [f"# Ollama: ollama create shelley -f Modelfile && ollama run shelley "
             f"\"{'Good morrow.' if template is not None else 'ROMEO:'}\"",
             f"FROM ./{GGUF_NAME}",
             f"TEMPLATE {modelfile_value(template if template is not None else '{{ .Prompt }}')}",
             f"PARAMETER num_ctx {mc.block_size}",
             f"PARAMETER temperature {temperature:g}"]
    lines += [f"PARAMETER stop {modelfile_value(s)}" for s in dict.fromkeys(stop)]
    return "\n".join(lines) + "\n"


def export_gguf(run_dir: str | Path, out: str | Path, gguf_type: str = "f32", force: bool = False,
                chat_template: str | None = None, chat_stop: list[str] | None = None) -> list[Path]:
    """Write model.gguf and its Modelfile for a run's ckpt.pt, with the chat template export/chat.py
    resolves (the run's, or `chat_template`'s file; `chat_stop`); returns the files written."""
    from export.gguf_vocab import gguf_vocab
    from export.layout import load_layout_run
    from training.chat_form import ollama_template

    if gguf_type not in GGUF_TYPES:
        raise UserError(f"unknown --gguf-type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    run_dir, out = Path(run_dir), Path(out)
    model, mc, tok, _ = load_layout_run(run_dir, "the GGUF export (llama.cpp's gpt2 or qwen3)")
    if mc.vocab_size != tok.get_vocab_size():
        raise UserError(f"{run_dir}: the model has {mc.vocab_size} token ids but its tokenizer "
                        f"{tok.get_vocab_size()}; retrain the run")
    chat = resolve_chat(run_dir, chat_template, chat_stop)
    vocab = gguf_vocab(tok)
    prepare_out_dir(out, force, GGUF_FILES)
    ollama = ollama_template(chat.form)
    if ollama is None:
        print(f"warning: the chat template ({chat.form.get('template_from', run_dir)}) was not written from a "
              "corpus form training/chat_form.py knows; the GGUF file carries it, the Modelfile stays plain "
              "completion", file=sys.stderr)
    write_gguf(out / GGUF_NAME, model.state_dict(), mc, vocab, gguf_type, name=run_dir.resolve().name,
               chat_template=chat.template)
    stop = (*chat.stop, EOS) if ollama else (EOS,)
    atomic_write(out / MODELFILE_NAME, modelfile_text(mc, ollama, stop))
    return [out / name for name in GGUF_FILES]


def main(argv: list[str] | None = None) -> int:
    """`python -m export --format gguf ...` (export/__main__.py hands over the other flags)."""
    p = argparse.ArgumentParser(prog="python -m export --format gguf", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="training run dir (ckpt.pt, tokenizer.json)")
    p.add_argument("--out", required=True, help="directory to write (model.gguf, Modelfile)")
    p.add_argument("--gguf-type", default="f32", help=f"weights: {', '.join(GGUF_TYPES)} (default f32)")
    p.add_argument("--force", action="store_true", help="overwrite an existing directory")
    add_chat_flags(p)
    args = p.parse_args(argv)
    for path in export_gguf(args.run, args.out, args.gguf_type, args.force, args.chat_template, args.chat_stop):
        print(f"{path}  {path.stat().st_size / 1e6:8.2f} MB")
    print(f"run it: llama-server -m {Path(args.out) / GGUF_NAME} --jinja")
    return 0
