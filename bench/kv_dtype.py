"""The KV cache in fp16 instead of fp32: what it saves, what parity and speed it costs, in one run.

    python -m bench.kv_dtype                          # the 3.7M bench model, 32 rows, 100 steps
    python -m bench.kv_dtype --size 87M --rows 1 16 --steps 40
    python -m bench.kv_dtype --precision int8         # int8 weights, each cache

Why: the cache is most of a server's memory at 64 slots of a large context (issue 25: 87M,
64 x 1,024 tokens, 4.8 GB in fp32), and llama.cpp keeps its cache in f16. The bench model's
run is exported twice by the project's exporter, `python -m export --kv-dtype fp32` and
`--kv-dtype fp16` (export/onnx_graph.py: GroupQueryAttention over fp16 past/present buffers,
q, k, v cast to fp16 before it and its output back to fp32), both run through the serving
runtime (which reads the cache's dtype from the graph), prefill the same 64-token prompts,
then decode `--steps` greedy steps of the fp32-cache model's tokens, and it prints the
largest logit difference, how often the top token agrees, and the median step time of each
at each row count, interleaved.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import provenance


def export_both(run: Path, out: Path, precision: str) -> dict[str, Path]:
    """The run exported with each KV cache dtype (and int8 weights for `precision` int8)."""
    from export.build import ExportConfig, export_run
    arts = {}
    for kv in ("fp32", "fp16"):
        arts[kv] = out / f"kv-{kv}"
        export_run(ExportConfig(run=str(run), out=str(arts[kv]), kv_dtype=kv,
                                quantize="int8" if precision == "int8" else None))
    return arts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kv_dtype", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="3.7M", choices=("3.7M", "11.5M", "87M"), help="bench/models.py")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 32])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="cores (0 = all); the calibrated spread decides")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"), help="the weights of both graphs")
    args = p.parse_args(argv)

    from bench.models import bench_model
    from core.artifact import load_artifact
    from serving.engine.runtime import Runtime

    run = bench_model("trained", args.size).run
    with tempfile.TemporaryDirectory() as d:
        arts = {k: load_artifact(a) for k, a in export_both(run, Path(d), args.precision).items()}
        rows = max(args.rows)
        rts = {k: Runtime(a, "cpu", args.threads, args.precision, slots=rows) for k, a in arts.items()}
        for rt in rts.values():
            rt.calibrate()
        rng = np.random.default_rng(0)
        vocab, context = rts["fp32"].vocab, rts["fp32"].context
        prompts = [rng.integers(0, vocab, 64).tolist() for _ in range(rows)]
        logits = {k: rt.prefill(0, prompts) for k, rt in rts.items()}
        diff, agree = [np.abs(logits["fp32"] - logits["fp16"]).max()], []
        lengths, tokens = np.full(rows, 64), logits["fp32"].argmax(1)
        steps = min(args.steps, context - 65)
        for _ in range(steps):
            out = {k: rt.decode(tokens, lengths) for k, rt in rts.items()}
            diff.append(np.abs(out["fp32"] - out["fp16"]).max())
            agree.append((out["fp32"].argmax(1) == out["fp16"].argmax(1)).mean())
            tokens, lengths = out["fp32"].argmax(1), lengths + 1
        times = {(k, n): [] for k in rts for n in args.rows}
        for _ in range(20):
            for n in args.rows:
                for k, rt in rts.items():
                    t0 = time.perf_counter()
                    rt.decode(tokens[:n], lengths[:n])
                    times[k, n].append(time.perf_counter() - t0)
        cache = {k: rt.cache.nbytes / 1e6 for k, rt in rts.items()}
    print(f"\n{provenance('python -m bench.kv_dtype', argv)}\n")
    print(f"model {args.size} (bench/models.py), {args.precision} weights, exported with --kv-dtype fp32 and "
          f"fp16; {rows} rows of 64-token prompts, then {steps} greedy steps on both "
          f"(the fp32 model's tokens); step times: median of 20, interleaved, past ~{64 + steps} tokens\n")
    print(f"| KV cache | bytes for {rows} slots x {context} | max abs logit difference | top-1 agreement | "
          + " | ".join(f"step, {n} row{'s' * (n > 1)}, ms" for n in args.rows) + " |")
    print("| --- | ---: | ---: | ---: |" + " ---: |" * len(args.rows))
    for k in rts:
        same = k == "fp32"
        cells = [f"{cache[k]:,.0f} MB", "0 (reference)" if same else f"{max(diff):.4f}",
                 "1 (reference)" if same else f"{np.mean(agree):.4f}",
                 *(f"{1e3 * statistics.median(times[k, n]):.2f}" for n in args.rows)]
        print(f"| {k} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
