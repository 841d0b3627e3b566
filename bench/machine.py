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
