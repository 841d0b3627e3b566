"""Export a training run to a model artifact dir for ONNX Runtime.

    python -m export --run runs/default --out artifacts/default [--dtype fp32|fp16]
                     [--kv-dtype fp32|fp16] [--quantize int8] [--opset 17] [--force]
                     [--chat-template FILE] [--chat-stop STR]
    python -m export --format hf --run runs/default --out hf/default   # transformers' format: export/hf.py
    python -m export --format gguf --run runs/default --out gguf/default [--gguf-type f32|f16|q8_0]
                                                      # llama.cpp and Ollama: export/gguf.py
    (hf and gguf take --chat-template FILE and --chat-stop STR too)

The work is in export/build.py; check the result against PyTorch with
`python -m export.verify ART --run RUN`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.artifact import KV_DTYPES
from core.errors import UserError, run_main
from export.build import ExportConfig, export_run
from export.chat import add_chat_flags
from export.onnx_graph import MAX_OPSET, MIN_OPSET

FORMATS = ("onnx", "hf", "gguf")


def parse_args(argv: list[str] | None) -> ExportConfig:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="training run dir (ckpt.pt, tokenizer.json)")
    p.add_argument("--out", required=True, help="artifact dir to write")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                   help="fp16 writes model.fp16.onnx next to model.onnx (for CUDA)")
    p.add_argument("--kv-dtype", choices=tuple(KV_DTYPES), default=None,
                   help="the KV cache's dtype in model.onnx and model.int8.onnx (default fp32; fp16 halves "
                        "its bytes, docs/export.md says what it costs); model.fp16.onnx's is always fp16")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8 writes model.int8.onnx (int8 MatMul weights, for CPUs) if its quality holds")
    p.add_argument("--opset", type=int, default=17, help=f"ONNX opset ({MIN_OPSET}..{MAX_OPSET})")
    p.add_argument("--force", action="store_true", help="overwrite an existing artifact dir")
    add_chat_flags(p)
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="hf: the run in transformers' format (GPT-2 or Qwen3) instead; gguf: one GGUF file "
                        "and an Ollama Modelfile. Both take --run, --out, --force, --chat-template and "
                        "--chat-stop; gguf also --gguf-type f32|f16|q8_0")
    args = vars(p.parse_args(argv))
    args.pop("format")
    return ExportConfig(**args)


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("--format", choices=FORMATS, default="onnx")
    fmt.add_argument("--kv-dtype")
    known, rest = fmt.parse_known_args(argv)
    if known.format != "onnx" and known.kv_dtype is not None:
        raise UserError(f"--kv-dtype is the ONNX artifact's; --format {known.format} writes weights only "
                        f"(its runtime picks the cache's type: llama-server -ctk/-ctv, transformers' own)")
    if known.format == "hf":
        from export.hf import main as export_hf_main
        return export_hf_main(rest)
    if known.format == "gguf":
        from export.gguf import main as export_gguf_main
        return export_gguf_main(rest)
    cfg = parse_args(argv)
    manifest = export_run(cfg)
    out = Path(cfg.out)
    for name, f in manifest["files"].items():
        print(f"{out / name}  {f['bytes'] / 1e6:8.2f} MB  sha256 {f['sha256'][:12]}")
    print(f"check it: python -m export.verify {out} --run {cfg.run}")
    return 0


if __name__ == "__main__":
    run_main(main)
