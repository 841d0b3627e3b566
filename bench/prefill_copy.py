"""n choices of one prompt: prefill it into n slots, or prefill one slot and copy its cache.

    python -m bench.prefill_copy                       # prompts of 64 and 200 tokens, n = 2, 4, 8
    python -m bench.prefill_copy --lengths 32,128 --n 2,8 --repeats 30

Why: a request for n choices needs the prompt's keys and values in n slots. The engine
prefills the prompt once and copies the first L positions of that slot into the others
(`Runtime.copy_prefix`, a numpy copy per layer) instead of prefilling n right-padded rows;
this measures both on the frankenstein-shaped model (random weights: timing depends on the
shape only) with the serving runtime itself, interleaved (A, B, A, B, ...) in one process,
and prints the median of each and their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prefill_copy", description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="64,200", help="prompt lengths in tokens")
    p.add_argument("--n", default="2,4,8", help="choices")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = its default)")
    args = p.parse_args(argv)

    from bench.models import bench_model
    from core.artifact import load_artifact
    from serving.engine.runtime import Runtime

    art = load_artifact(bench_model("random").onnx)
    ns = [int(x) for x in args.n.split(",")]
    rt = Runtime(art, device="cpu", threads=args.threads, slots=max(ns))
    rng = np.random.default_rng(0)
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        prompt = rng.integers(0, art.config.vocab_size, length).tolist()
        for n in ns:
            def prefill_each():
                rt.prefill(0, [prompt] * n)

            def prefill_once_and_copy():
                rt.prefill(0, [prompt])
                for s in range(1, n):
                    rt.copy_prefix(0, s, length)
            times = {prefill_each: [], prefill_once_and_copy: []}
            for f in times:
                f()   # warm-up
            for _ in range(args.repeats):
                for f, got in times.items():
                    t0 = time.perf_counter()
                    f()
                    got.append(time.perf_counter() - t0)
            a, b = (1000 * statistics.median(t) for t in times.values())
            rows.append((length, n, a, b))
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{os.cpu_count()} CPUs (load {load} at the end); model {art.config.n_layer} layers x {art.config.n_head * art.config.head_dim} wide, context {art.config.context_length} (bench/models.py, random weights), fp32, CPU, "
          f"{args.threads or 'default'} threads; median of {args.repeats}, interleaved\n")
    print("| prompt tokens | n | prefill n rows, ms | prefill 1 + copy n-1, ms | copy / prefill |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for length, n, a, b in rows:
        print(f"| {length} | {n} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
