"""Build a model artifact dir from a training run: trace, fuse, check, quantize, write.

    manifest = export_run(ExportConfig(run="runs/default", out="artifacts/default", quantize="int8"))

Writes model.onnx (+ model.fp16.onnx with dtype fp16, + model.int8.onnx with quantize int8;
model.onnx's and model.int8.onnx's KV cache in kv_dtype, model.fp16.onnx's always fp16),
embed.onnx (the final norm's hidden states, for /v1/embeddings: export/embed_graph.py),
tokenizer.json, chat_template.json (export/chat.py), model_config.json and, last,
manifest.json (sha256 of every other file).
Each graph is checked with onnx.checker (full shape inference) and loaded in ONNX Runtime
before it is kept; the int8 file only if its quality holds (export/quantize.py).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from core.artifact import CONFIG_NAME, EMBED_FILE, KV_DTYPES, MANIFEST_NAME, MODEL_FILES, TOKENIZER_NAME
from core.chat import CHAT_NAME, write_chat
from core.errors import UserError
from core.files import prepare_out_dir
from core.run_dir import read_summary
from core.tokens import EOS
from export.artifact import artifact_config, write_manifest, write_model_config
from export.chat import resolve_chat
from export.layout import load_checked_run
from export.onnx_graph import MAX_OPSET, MIN_OPSET


@dataclass
class ExportConfig:
    run: str
    out: str
    dtype: str = "fp32"            # "fp16" also writes model.fp16.onnx (for the CUDA provider)
    quantize: str | None = None    # "int8" also writes model.int8.onnx (for CPUs)
    kv_dtype: str | None = None    # the KV cache of model.onnx and model.int8.onnx: fp32 (None) or fp16
    opset: int = 17
    force: bool = False
    chat_template: str | None = None   # a Jinja2 file instead of the run's template (export/chat.py)
    chat_stop: list[str] | None = None


def load_model_run(run_dir: Path):
    """(model, config, tokenizer); refuses a model without a KV cache (bigram) before building it."""
    def refuse(mc) -> str | None:
        if mc.model in ("gpt", "qwen3"):
            return None
        return (f"a {mc.model!r} model; export supports gpt and qwen3 (they have the KV cache the "
                f"server needs); train with --model gpt or qwen3")
    return load_checked_run(run_dir, refuse)


def check_dtypes(cfg: ExportConfig) -> str:
    """The cache dtype of model.onnx and model.int8.onnx; UserError for a contradiction."""
    if cfg.kv_dtype not in (None, *KV_DTYPES):
        raise UserError(f"--kv-dtype {cfg.kv_dtype} is not one of {', '.join(KV_DTYPES)}")
    if cfg.dtype == "fp16" and cfg.kv_dtype == "fp32":
        raise UserError("--kv-dtype fp32 contradicts --dtype fp16: model.fp16.onnx is fp16 throughout, "
                        "its KV cache included; leave --kv-dtype out (model.onnx keeps an fp32 cache) "
                        "or pass --kv-dtype fp16")
    return cfg.kv_dtype or "fp32"


def export_run(cfg: ExportConfig) -> dict:
    """Write the artifact dir; returns the manifest."""
    import torch

    from export.embed_graph import export_embed
    from export.onnx_graph import check_exportable, check_runnable, convert_fp16, export_onnx, fuse_for_ort
    from export.quantize import describe, quantize_int8
    from training.model import count_params
    from training.tokenizer import eos_id

    if not MIN_OPSET <= cfg.opset <= MAX_OPSET:
        raise UserError(f"--opset {cfg.opset} is not supported: the exporter writes opsets "
                        f"{MIN_OPSET}..{MAX_OPSET} (ONNX Runtime runs them all); try --opset 17")
    kv_dtype = check_dtypes(cfg)
    run, out = Path(cfg.run), Path(cfg.out)
    model, config, tok = load_model_run(run)
    check_exportable(model)
    chat = resolve_chat(run, cfg.chat_template, cfg.chat_stop)
    eos = eos_id(tok)
    if eos is None:
        raise UserError(f"{run / TOKENIZER_NAME} has no {EOS} token; retrain with this version")
    # The manifest goes first, so a half-rewritten dir is never taken for a valid one.
    out = prepare_out_dir(out, cfg.force, (MANIFEST_NAME, *MODEL_FILES.values(), EMBED_FILE, TOKENIZER_NAME,
                                           CONFIG_NAME, CHAT_NAME))

    files = {"fp32": MODEL_FILES["fp32"]}
    tmp = out / ".model.onnx.tmp"
    try:
        torch.manual_seed(0)  # the tracing inputs are random; keep exports reproducible
        export_onnx(model, tmp, cfg.opset, kv_dtype)
        if config.model == "gpt":   # qwen3 has no GELU; ORT fuses its RMSNorms when it loads the graph
            fuse_for_ort(tmp, config.n_head, config.n_embd)
        check_runnable(tmp, cfg.opset)
        os.replace(tmp, out / files["fp32"])
        if cfg.dtype == "fp16":   # (an fp16 cache's casts become fp16 -> fp16: ORT drops them)
            convert_fp16(out / files["fp32"], tmp)
            check_runnable(tmp, cfg.opset)
            files["fp16"] = MODEL_FILES["fp16"]
            os.replace(tmp, out / files["fp16"])
        export_embed(model, tmp, cfg.opset)   # the embeddings graph (export/embed_graph.py)
        if config.model == "gpt":
            fuse_for_ort(tmp, config.n_head, config.n_embd)
        check_runnable(tmp, cfg.opset)
        os.replace(tmp, out / EMBED_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.copyfile(run / TOKENIZER_NAME, out / TOKENIZER_NAME)
    write_chat(out, chat)
    card = artifact_config(run.resolve().name, config, count_params(model), eos, cfg.opset, files, kv_dtype)
    quality = quantize_int8(out, run, card) if cfg.quantize == "int8" else None
    if quality is not None and quality.ok:
        card = dataclasses.replace(card, files={**files, "int8": MODEL_FILES["int8"]})
    write_model_config(out, card)
    manifest = write_manifest(out, read_summary(run))
    if quality is not None:
        if not quality.ok:
            raise UserError(f"int8 quality too low, so no model.int8.onnx ({describe(quality)}); "
                            f"the fp32 artifact in {out} is complete: serve it with --precision fp32")
        print(describe(quality), file=sys.stderr)
    return manifest
