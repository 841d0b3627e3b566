"""The human-readable files of a run dir: metrics.jsonl, summary.json and loss.png.

Every write is atomic (temp file + rename), so a killed run never leaves a torn file.
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

from core.files import atomic_write
from core.run_dir import METRICS, PLOT, write_summary  # noqa: F401  (the trainer's writer, re-exported)

_IMPORTED = time.monotonic()


def process_age() -> float:
    """Seconds since this process started, interpreter start-up and imports included (from
    Linux's /proc; elsewhere, since this module was imported)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))   # field 22: starttime
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


def read_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl's rows (the one reader: the trainer, explain, the benches); a torn or
    foreign line is skipped."""
    path = Path(run_dir) / METRICS
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("iter"), (int, float)):
                rows.append(row)
    return rows


def append_metrics(run_dir: Path, row: dict, upto_iter: int | None = None) -> list[dict]:
    """Add one evaluation's row. On resume, rows past the resumed iteration are dropped
    first: the run repeats those iterations."""
    rows = read_metrics(run_dir)
    if upto_iter is not None:
        rows = [r for r in rows if r["iter"] < upto_iter]
    rows.append(row)
    atomic_write(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
    return rows



def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def preload_plotting() -> None:
    """Import matplotlib now (~0.3 s): a run on a --time-budget pays it in its start-up,
    which is measured, instead of in its end, which is guessed."""
    _pyplot()


def plot_losses(run_dir: Path, rows: list[dict], title: str) -> None:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    trained = [r for r in rows if r["train_loss"] is not None]   # none before the first step
    ax.plot([r["iter"] for r in trained], [r["train_loss"] for r in trained],
            label="train (mean since the previous evaluation)", color="#1f77b4")
    ax.plot([r["iter"] for r in rows], [r["val_loss"] for r in rows], label="validation", color="#d62728")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(Path(run_dir) / PLOT, buf.getvalue())
