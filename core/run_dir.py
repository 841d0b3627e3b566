"""A training run dir's files, named once, and its summary, read once.

    from core.run_dir import CKPT, LAST, METRICS, SUMMARY, PLOT, TOKENIZER, CHAT
    summary = read_summary("runs/default")     # summary.json as a dict; {} before the run ends
    write_summary(run_dir, summary)            # atomic (training writes it at the end)
    is_run("runs/default")                     # holds a checkpoint: something to export

Training writes the run dir; export, explain, the demo and the benches read it. They name its
files through here, not as literals, so a renamed file changes in one place. The layout is
docs/DESIGN.md's "Files between stages"; checkpoints' contents live in training/checkpoint.py
(torch), and the tokenizer and chat template files are the artifact's too (core/artifact.py,
core/chat.py). Torch-free, so the serving side (the demo) may import it.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from core.artifact import TOKENIZER_NAME as TOKENIZER
from core.chat import CHAT_NAME as CHAT
from core.files import atomic_write

CKPT, LAST = "ckpt.pt", "last.pt"          # the best model by validation loss; the latest state (--resume)
METRICS, SUMMARY, PLOT = "metrics.jsonl", "summary.json", "loss.png"

__all__ = ["CKPT", "LAST", "METRICS", "SUMMARY", "PLOT", "TOKENIZER", "CHAT",
           "read_summary", "write_summary", "is_run"]


def read_summary(run_dir: str | os.PathLike) -> dict:
    """summary.json (params, best_val_loss, ..., model_config, train_config); {} when the run
    has not finished. An unreadable file is one warning line and {}: every reader can go on
    without it."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"warning: {path} is unreadable ({e}); going on without the training summary", file=sys.stderr)
        return {}
    return summary if isinstance(summary, dict) else {}


def write_summary(run_dir: str | os.PathLike, summary: dict) -> None:
    atomic_write(Path(run_dir) / SUMMARY, json.dumps(summary, indent=2) + "\n")


def is_run(run_dir: str | os.PathLike) -> bool:
    """Whether the dir holds a finished checkpoint (the best model so far)."""
    return (Path(run_dir) / CKPT).is_file()
