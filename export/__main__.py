"""Export a training run to a model artifact dir for ONNX Runtime.

    python -m export --run runs/default --out artifacts/default [--dtype fp32|fp16] [--opset 17] [--force]
    python -m export --format hf --run runs/default --out hf/default   # transformers' format: export/hf.py

Writes model.onnx (+ model.fp16.onnx with --dtype fp16), tokenizer.json, model_config.json
and, last, manifest.json (sha256 of every other file). The graph is checked with
onnx.checker (full shape inference) and loaded once in ONNX Runtime before it is kept.
Check it against PyTorch with `python -m export.verify ART --run RUN`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from training.cli import UserError, ensure_writable_dir, run_main

from export.artifact import (ARTIFACT_FILES, FP16_NAME, FP32_NAME, MANIFEST_NAME,
                             TOKENIZER_NAME, write_manifest, write_model_config)
from export.onnx_graph import MAX_OPSET, MIN_OPSET


@dataclass
class ExportConfig:
    run: str
    out: str
    dtype: str = "fp32"     # "fp16" also writes model.fp16.onnx (for the CUDA provider)
    opset: int = 17
    force: bool = False


def parse_args(argv: list[str] | None) -> ExportConfig:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="training run dir (ckpt.pt, tokenizer.json)")
    p.add_argument("--out", required=True, help="artifact dir to write")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                   help="fp16 writes model.fp16.onnx next to model.onnx")
    p.add_argument("--opset", type=int, default=17, help=f"ONNX opset ({MIN_OPSET}..{MAX_OPSET})")
    p.add_argument("--force", action="store_true", help="overwrite an existing artifact dir")
    return ExportConfig(**vars(p.parse_args(argv)))


def load_gpt(run_dir: Path):
    """(model, config, tokenizer); refuses anything but a GPT before building it."""
    from training.checkpoint import CKPT_NAME, load_checkpoint, load_run
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} does not exist; train first (make train) or fix --run")
    kind = load_checkpoint(run_dir / CKPT_NAME)["model_config"].get("model", "gpt")
    if kind != "gpt":
        raise UserError(f"{run_dir / CKPT_NAME} holds a {kind!r} model; export supports gpt "
                        f"only (it has the KV cache the server needs); train with --model gpt")
    return load_run(run_dir)


def prepare_out(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"output dir {out} already exists; pass --force to overwrite it or choose another --out")
        # The manifest goes first so a half-rewritten dir is never taken for a valid one.
        for name in (MANIFEST_NAME, *ARTIFACT_FILES):
            (out / name).unlink(missing_ok=True)
    return ensure_writable_dir(out)


def check_runnable(path: Path, opset: int) -> None:
    """onnx.checker with full shape inference, then one ONNX Runtime session (CPU)."""
    import onnx
    import onnxruntime as ort
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise UserError(f"the exported graph fails onnx.checker at opset {opset}: "
                        f"{str(e).splitlines()[0]}; try --opset 17") from None
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UserError(f"ONNX Runtime {ort.__version__} cannot run the graph at opset {opset} "
                        f"({str(e).splitlines()[0][:200]}); try --opset 17") from None


def read_summary(path: Path) -> dict:
    """The run's summary.json for the manifest; {} (and a warning) if missing or unreadable."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"warning: {path} is unreadable ({e}); manifest.json gets no training summary",
              file=sys.stderr)
        return {}


def export_run(cfg: ExportConfig) -> dict:
    """Write the artifact dir; returns the manifest."""
    import torch
    from training.model import count_params
    from training.tokenizer import eos_id

    from export.onnx_graph import convert_fp16, export_onnx, fuse_for_ort

    if not MIN_OPSET <= cfg.opset <= MAX_OPSET:
        raise UserError(f"--opset {cfg.opset} is not supported: the exporter writes opsets "
                        f"{MIN_OPSET}..{MAX_OPSET} (ONNX Runtime runs them all); try --opset 17")
    run, out = Path(cfg.run), Path(cfg.out)
    model, config, tok = load_gpt(run)
    out = prepare_out(out, cfg.force)

    tmp = out / f".{FP32_NAME}.tmp"
    try:
        torch.manual_seed(0)  # the tracing inputs are random; keep exports reproducible
        export_onnx(model, tmp, cfg.opset)
        fuse_for_ort(tmp, config.n_head, config.n_embd)
        check_runnable(tmp, cfg.opset)
        os.replace(tmp, out / FP32_NAME)
        if cfg.dtype == "fp16":
            convert_fp16(out / FP32_NAME, tmp)
            check_runnable(tmp, cfg.opset)
            os.replace(tmp, out / FP16_NAME)
    finally:
        tmp.unlink(missing_ok=True)

    shutil.copyfile(run / TOKENIZER_NAME, out / TOKENIZER_NAME)
    eos = eos_id(tok)
    if eos is None:
        raise UserError(f"{run / TOKENIZER_NAME} has no <|endoftext|> token; retrain with this version")
    write_model_config(out, run.resolve().name, config, count_params(model), eos, cfg.opset,
                       cfg.dtype == "fp16")
    training = read_summary(run / "summary.json")
    return write_manifest(out, training)


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("--format", choices=("onnx", "hf"), default="onnx")
    known, argv = fmt.parse_known_args(argv)
    if known.format == "hf":
        from export.hf import main as export_hf_main
        return export_hf_main(argv)
    cfg = parse_args(argv)
    manifest = export_run(cfg)
    out = Path(cfg.out)
    for name, f in manifest["files"].items():
        print(f"{out / name}  {f['bytes'] / 1e6:8.2f} MB  sha256 {f['sha256'][:12]}")
    print(f"check it: python -m export.verify {out} --run {cfg.run}")
    return 0


if __name__ == "__main__":
    run_main(main)
