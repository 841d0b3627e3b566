"""The machine a benchmark ran on, in one line for its header.

    print(describe_cpu())    # "AMD EPYC, 2 CPUs, avx512f avx2 avx512_bf16 ..."

Timings here move up to 2x between machines of the same name (one had AVX-512 and bf16,
another only AVX2), so every table says which CPU and instruction sets it ran on.
"""
from __future__ import annotations

import os
from pathlib import Path

FLAGS = ("avx512f", "avx2", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile")


def describe_cpu() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    flags = set(next((ln for ln in lines if ln.startswith("flags")), "").split())
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "CPU")
    have = [f for f in FLAGS if f in flags]
    return f"{name}, {os.cpu_count()} CPUs, {' '.join(have) or 'no avx2'}"


def provenance(prog: str, argv: list[str] | None = None) -> str:
    """One line for a table's header: the command, the UTC date, the machine, the commit
    (with "+changes" when the tree differs from it), so a figure can be traced and re-run."""
    import datetime
    import subprocess
    import sys

    args = sys.argv[1:] if argv is None else argv
    root = Path(__file__).resolve().parents[1]

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"`{' '.join([prog, *args])}` | {date} | {describe_cpu()} | commit {commit}"
