"""Load a model artifact dir (written by `python -m export`) and verify it first.

    art = load_artifact("artifacts/default")   # UserError (one line) if incomplete/corrupt
    art.config["context_length"], art.onnx_path(fp16=False), art.tokenizer

manifest.json lists the sha256 and size of every other file; each is checked before the
server loads anything, so a torn copy or a half-synced volume is refused, not served.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from serving.errors import UserError

REQUIRED = ("model_config.json", "tokenizer.json", "manifest.json")
CONFIG_KEYS = ("vocab_size", "context_length", "n_layer", "n_head", "head_dim",
               "eos_token_id", "window_keep", "onnx")


@dataclass
class Artifact:
    path: Path
    config: dict          # model_config.json
    manifest: dict        # manifest.json
    tokenizer: Tokenizer

    def onnx_path(self, fp16: bool = False) -> Path | None:
        name = self.config["onnx"].get("fp16" if fp16 else "fp32")
        return self.path / name if name else None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable or not JSON ({type(e).__name__}); re-run the export") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; re-run the export")
    return data


def verify_manifest(path: Path, manifest: dict) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise UserError(f"{path}/manifest.json lists no files; re-run the export")
    for name in ("model_config.json", "tokenizer.json"):
        if name not in files:
            raise UserError(f"{path}/manifest.json does not list {name}; re-run the export")
    for name, entry in files.items():
        f = path / name
        if not f.is_file():
            raise UserError(f"artifact {path} is incomplete: {name} is missing; copy it again or re-run the export")
        if f.stat().st_size != entry.get("bytes", -1) or sha256_of(f) != entry.get("sha256"):
            raise UserError(f"artifact {path} is corrupt: {name} does not match manifest.json "
                            f"(size or sha256); copy it again or re-run the export")


def load_artifact(path: str | Path) -> Artifact:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"no model artifact dir at {path}; export one with `python -m export --run RUN --out {path}`")
    for name in REQUIRED:
        if not (path / name).is_file():
            raise UserError(f"artifact {path} is incomplete: {name} is missing; re-run the export")
    manifest = _read_json(path / "manifest.json")
    verify_manifest(path, manifest)
    config = _read_json(path / "model_config.json")
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise UserError(f"{path}/model_config.json lacks {', '.join(missing)}; re-run the export")
    onnx = config["onnx"].get("fp32")
    if not onnx or onnx not in manifest["files"]:
        raise UserError(f"artifact {path}: the fp32 ONNX file is not in manifest.json; re-run the export")
    try:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as e:  # tokenizers raises its own exception type for bad JSON
        raise UserError(f"{path}/tokenizer.json cannot be loaded ({e}); re-run the export") from None
    return Artifact(path=path, config=config, manifest=manifest, tokenizer=tokenizer)
