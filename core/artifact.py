"""The model artifact dir: its files, its ONNX names and model_config.json, defined once.

    art = load_artifact("artifacts/default")   # UserError (one line) if incomplete/corrupt
    art.config.context_length, art.onnx_path("int8"), art.tokenizer, art.tokens.text(42)
    art.chat.template, art.chat.stop            # chat_template.json (core/chat.py), optional
    art.embed_path                              # embed.onnx (the embeddings graph), or None
    inputs, outputs = graph_names(n_layer)      # the graph's I/O names, in order
    write_manifest(art_dir, versions, training) # export: hashes every other file, written last

This module is the contract between `python -m export` (which writes the dir) and the
server (which reads it); docs/DESIGN.md ("Files between stages", "ONNX graph") describes
it. manifest.json lists the sha256 and size of every other file; each is checked before
the server loads anything, so a torn copy or a half-synced volume is refused, not served.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from core.errors import UserError
from core.files import atomic_write, read_json, sha256_file
from core.model_config import ModelConfig
from core.window import window_keep

FORMAT_VERSION = 3     # 3: model_config.json embeds the ModelConfig; 2 copied its fields beside it
CONFIG_NAME, TOKENIZER_NAME, MANIFEST_NAME = "model_config.json", "tokenizer.json", "manifest.json"
MODEL_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
# The KV cache's dtype in model.onnx and model.int8.onnx (`python -m export --kv-dtype`) -> the
# numpy name of their past_key_values / present elements; model.fp16.onnx's are always float16.
KV_DTYPES = {"fp32": "float32", "fp16": "float16"}
# The embeddings graph (export/embed_graph.py): optional, artifacts exported before it lack it.
EMBED_FILE, EMBED_INPUT, EMBED_OUTPUT = "embed.onnx", "input_ids", "last_hidden_state"

# ONNX input/output names. Hugging Face's where the meaning is theirs; ONNX Runtime's
# GroupQueryAttention names for the per-row lengths, which have no HF counterpart.
INPUT_IDS, POSITION_IDS = "input_ids", "position_ids"
SEQLENS, TOTAL_LENGTH = "seqlens_k", "total_sequence_length"
PAST_KEY, PAST_VALUE = "past_key_values.{i}.key", "past_key_values.{i}.value"
LOGITS, PRESENT_KEY, PRESENT_VALUE = "logits", "present.{i}.key", "present.{i}.value"


def graph_names(n_layer: int) -> tuple[list[str], list[str]]:
    """(input names, output names) in the graph's order."""
    inputs, outputs = [INPUT_IDS, POSITION_IDS, SEQLENS, TOTAL_LENGTH], [LOGITS]
    for i in range(n_layer):
        inputs += [PAST_KEY.format(i=i), PAST_VALUE.format(i=i)]
        outputs += [PRESENT_KEY.format(i=i), PRESENT_VALUE.format(i=i)]
    return inputs, outputs


@dataclass(frozen=True)
class ArtifactConfig:
    """model_config.json: the model (training's ModelConfig, embedded whole), what export
    added to it, and the facts derived from both (written out too, for readers)."""
    name: str
    params: int
    eos_token_id: int
    opset: int
    files: dict                # precision -> ONNX file name, for the precisions exported
    model: ModelConfig
    kv_dtype: str = "fp32"     # KV_DTYPES: the fp32 and int8 files' cache (absent before it: fp32)
    format_version: int = FORMAT_VERSION

    # ---- derived: one owner each (the ModelConfig, graph_names, core/window.py) ----------
    architecture = property(lambda self: self.model.model)
    vocab_size = property(lambda self: self.model.vocab_size)
    context_length = property(lambda self: self.model.block_size)   # also the KV buffer's length
    n_layer = property(lambda self: self.model.n_layer)
    n_head = property(lambda self: self.model.n_head)
    kv_heads = property(lambda self: self.model.kv_heads)            # the KV cache's heads
    head_dim = property(lambda self: self.model.head_dim)
    window_keep = property(lambda self: window_keep(self.model.block_size))
    inputs = property(lambda self: graph_names(self.model.n_layer)[0])
    outputs = property(lambda self: graph_names(self.model.n_layer)[1])

    DERIVED = ("architecture", "vocab_size", "context_length", "n_layer", "n_head", "kv_heads", "head_dim",
               "window_keep", "inputs", "outputs")

    def to_json(self) -> str:
        out = dataclasses.asdict(self)
        out["derived"] = {k: getattr(self, k) for k in self.DERIVED}   # for readers; never read back
        return json.dumps(out, indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "ArtifactConfig":
        version = d.get("format_version", 1)
        if version != FORMAT_VERSION:
            raise UserError(f"{where} is artifact format {version}; this shelley reads format "
                            f"{FORMAT_VERSION}; re-run the export")
        fields = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise UserError(f"{where} lacks {', '.join(missing)}; re-run the export")
        if d.get("kv_dtype", "fp32") not in KV_DTYPES:
            raise UserError(f"{where}: kv_dtype {d['kv_dtype']!r} is not one of {', '.join(KV_DTYPES)}; "
                            f"re-run the export")
        try:
            model = ModelConfig.from_dict(d["model"])
        except (TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{where}: its model is not a valid ModelConfig ({e}); re-run the export") from None
        return cls(**{**{k: v for k, v in d.items() if k in fields}, "model": model})


def write_manifest(art: Path, versions: dict, training: dict) -> dict:
    """Hash every file of `art` except the manifest itself; written last, atomically."""
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(Path(art).iterdir())
             if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")}
    manifest = {"format_version": FORMAT_VERSION, "files": files, "versions": versions,
                "training": training,
                "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write(Path(art) / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_manifest(art: Path, manifest: dict) -> list[str]:
    """One line per listed file that is missing or whose size or sha256 differs."""
    problems = []
    for name, want in manifest.get("files", {}).items():
        p = Path(art) / name
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif p.stat().st_size != want.get("bytes") or sha256_file(p) != want.get("sha256"):
            problems.append(f"{name}: size or sha256 does not match manifest.json")
    return problems


def read_config(art: Path) -> ArtifactConfig:
    return ArtifactConfig.from_dict(read_json(Path(art) / CONFIG_NAME), f"{art}/{CONFIG_NAME}")


@dataclass
class Artifact:
    path: Path
    config: ArtifactConfig
    manifest: dict
    tokenizer: object     # tokenizers.Tokenizer

    @cached_property
    def chat(self):
        """The chat template (core/chat.py), or None for an artifact exported before chat
        templates; read only when manifest.json lists it, so its hash was checked."""
        from core.chat import CHAT_NAME, read_chat
        return read_chat(self.path) if CHAT_NAME in self.manifest.get("files", {}) else None

    @property
    def embed_path(self) -> Path | None:
        """embed.onnx (the final norm's hidden states), or None for an artifact exported before
        it; only when manifest.json lists it, so its hash was checked."""
        return self.path / EMBED_FILE if EMBED_FILE in self.manifest.get("files", {}) else None

    @cached_property
    def tokens(self):
        """The vocabulary as bytes and texts (core/tokens.py), built once for every user."""
        from core.tokens import TokenTable
        return TokenTable(self.tokenizer)

    def onnx_path(self, precision: str = "fp32") -> Path:
        name = self.config.files.get(precision)
        if not name:
            have = ", ".join(self.config.files)
            raise UserError(f"artifact {self.path} has no {precision} model (it has {have}); "
                            f"export it with `python -m export ... --{'dtype fp16' if precision == 'fp16' else 'quantize int8'}`")
        return self.path / name


def load_artifact(path: str | Path) -> Artifact:
    from tokenizers import Tokenizer
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"no model artifact dir at {path}; export one with `python -m export --run RUN --out {path}`")
    for name in (CONFIG_NAME, TOKENIZER_NAME, MANIFEST_NAME):
        if not (path / name).is_file():
            raise UserError(f"artifact {path} is incomplete: {name} is missing; re-run the export")
    manifest = read_json(path / MANIFEST_NAME)
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not {CONFIG_NAME, TOKENIZER_NAME} <= set(listed):
        raise UserError(f"{path}/manifest.json does not list {CONFIG_NAME} and {TOKENIZER_NAME}; re-run the export")
    problems = check_manifest(path, manifest)
    if problems:
        raise UserError(f"artifact {path} is corrupt or incomplete ({problems[0]}); "
                        f"copy it again or re-run the export")
    config = read_config(path)
    unlisted = [f for f in config.files.values() if f not in listed]
    if unlisted:
        raise UserError(f"artifact {path}: {', '.join(unlisted)} not in manifest.json; re-run the export")
    try:
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_NAME))
    except Exception as e:  # tokenizers raises its own exception type for bad JSON
        raise UserError(f"{path}/{TOKENIZER_NAME} cannot be loaded ({e}); re-run the export") from None
    return Artifact(path=path, config=config, manifest=manifest, tokenizer=tokenizer)
