"""Export a training run as GGUF, the file llama.cpp and Ollama run, with an Ollama Modelfile.

    python -m export --format gguf --run runs/default --out gguf/default [--gguf-type f32|f16|q8_0]
    llama-server -m gguf/default/model.gguf --jinja     # llama.cpp: completions, and chats in the run's template
    ollama create shelley -f gguf/default/Modelfile && ollama run shelley "Good morrow."   # Ollama

Why: most people run small models locally in llama.cpp or Ollama, and both read one GGUF
file. It is written with the `gguf` package (llama.cpp's own Python writer), not llama.cpp's
converter, which neither knows our config nor recognises our vocabulary. Our GPT is GPT-2, so
the file is llama.cpp's `gpt2` architecture: learned positions, per-block LayerNorms, fused
QKV, tanh-GELU MLP. `nn.Linear` keeps its weight as (out, in), which is the row order GGUF
wants, so nothing is transposed; the output layer is tied to the token embedding and is not
stored (llama.cpp reuses `token_embd.weight` when `output.weight` is absent). `--gguf-type`:
f32; f16; q8_0 (2-D weights whose rows are a multiple of 32 wide, else f32). LayerNorms and
biases stay f32. The tokenizer's form is export/gguf_vocab.py's. `make gguf-test` runs the
file in a real llama-server (tests/gguf_check.py).

When the run carries a chat template (`chat_template.json`, core/chat.py), its Jinja source
becomes `tokenizer.chat_template` (`llama-server --jinja` renders chats with it), and the
Modelfile gets the same format as an Ollama Go template (training/chat_form.py's
`ollama_template`, written from the same parts) and the chat's stop strings before
end-of-text. A run without one exports plain completion (`{{ .Prompt }}`, stop at end-of-text).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.chat import ChatTemplate, read_chat
from core.errors import UserError
from core.files import atomic_write, prepare_out_dir
from core.model_config import ModelConfig
from training.tokenizer import EOS

GGUF_NAME, MODELFILE_NAME = "model.gguf", "Modelfile"
GGUF_FILES = (GGUF_NAME, MODELFILE_NAME)
GGUF_TYPES = ("f32", "f16", "q8_0")
LAYER_NORM_EPS = 1e-5                  # training/model.py's LayerNorms
DEFAULT_TEMPERATURE = 0.8              # training.sample's default
# ours -> llama.cpp's name inside blk.{i}
BLOCK_TENSORS = {"ln_1": "attn_norm", "attn.qkv": "attn_qkv", "attn.proj": "attn_output",
                 "ln_2": "ffn_norm", "mlp.fc": "ffn_up", "mlp.proj": "ffn_down"}
TOP_TENSORS = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
               "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"}


def gguf_tensor_names(n_layer: int) -> dict[str, str]:
    """Our state_dict's names -> llama.cpp's gpt2 names (lm_head left out: it is tied)."""
    names = dict(TOP_TENSORS)
    for i in range(n_layer):
        for ours, theirs in BLOCK_TENSORS.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = f"blk.{i}.{theirs}.{kind}"
    return names


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
    """One GGUF file for a GPT's state_dict (numpy or torch tensors) and its GGUFVocab,
    written to a temp file and renamed into place."""
    import gguf

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    tmp = path.parent / f".{path.name}.tmp"
    w = gguf.GGUFWriter(tmp, arch="gpt2")
    try:
        w.add_name(name)
        w.add_file_type(int(file_type))
        if gguf_type == "q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(mc.block_size)
        w.add_embedding_length(mc.n_embd)
        w.add_feed_forward_length(4 * mc.n_embd)
        w.add_block_count(mc.n_layer)
        w.add_head_count(mc.n_head)
        w.add_layer_norm_eps(LAYER_NORM_EPS)
        vocab.write(w)
        if chat_template is not None:
            w.add_chat_template(chat_template)
        for ours, theirs in gguf_tensor_names(mc.n_layer).items():
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
    end there."""
    lines = [f"# Ollama: ollama create shelley -f Modelfile && ollama run shelley "
             f"\"{'Good morrow.' if template is not None else 'ROMEO:'}\"",
             f"FROM ./{GGUF_NAME}",
             f"TEMPLATE {modelfile_value(template if template is not None else '{{ .Prompt }}')}",
             f"PARAMETER num_ctx {mc.block_size}",
             f"PARAMETER temperature {temperature:g}"]
    lines += [f"PARAMETER stop {modelfile_value(s)}" for s in dict.fromkeys(stop)]
    return "\n".join(lines) + "\n"


def export_gguf(run_dir: str | Path, out: str | Path, gguf_type: str = "f32", force: bool = False,
                chat: ChatTemplate | None = None) -> list[Path]:
    """Write model.gguf and its Modelfile for a run's ckpt.pt, with `chat`'s format when given
    (`main` passes the run's own); returns the files written."""
    from export.gguf_vocab import gguf_vocab
    from training.chat_form import ollama_template
    from export.hf import load_gpt2_run

    if gguf_type not in GGUF_TYPES:
        raise UserError(f"unknown --gguf-type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    run_dir, out = Path(run_dir), Path(out)
    model, mc, tok = load_gpt2_run(run_dir, "llama.cpp's gpt2 architecture")
    if mc.vocab_size != tok.get_vocab_size():
        raise UserError(f"{run_dir}: the model has {mc.vocab_size} token ids but its tokenizer "
                        f"{tok.get_vocab_size()}; retrain the run")
    vocab = gguf_vocab(tok)
    prepare_out_dir(out, force, GGUF_FILES)
    ollama = ollama_template(chat.form) if chat else None
    if chat and ollama is None:
        print(f"warning: {run_dir}'s chat template was not written from a corpus form training/chat_form.py "
              "knows; the GGUF file carries it, the Modelfile stays plain completion", file=sys.stderr)
    write_gguf(out / GGUF_NAME, model.state_dict(), mc, vocab, gguf_type, name=run_dir.resolve().name,
               chat_template=chat.template if chat else None)
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
    args = p.parse_args(argv)
    chat = read_chat(args.run)          # None for a run trained before chat templates: plain completion
    for path in export_gguf(args.run, args.out, args.gguf_type, args.force, chat=chat):
        print(f"{path}  {path.stat().st_size / 1e6:8.2f} MB")
    print(f"run it: llama-server -m {Path(args.out) / GGUF_NAME}{' --jinja' if chat else ''}")
    return 0
