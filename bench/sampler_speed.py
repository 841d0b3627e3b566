"""The batch sampler's cost per step, before (the float64, sort-and-cumsum sampler of commit
cd5b9ca) and after (serving/engine/sampling.py), in one run.

    python -m bench.sampler_speed                          # 32 rows, vocab 2000 and 50000
    python -m bench.sampler_speed --rows 1 32 64 --vocab 2000 --repeats 200

Why: at 32 streams a decode step of the 3.7M model is ~9 ms and the old sampler took 2.4 ms
of it at temperature 1 (issue 25). Each setting (greedy; temperature 1; top-k 40; top-p 0.9;
top-k 40 + top-p 0.95; a mix of all of them, a quarter each) samples the same logits (random
normal, scale 3, float32 as ONNX Runtime returns them) with both samplers, interleaved
(before, after, before, ...), and prints the median microseconds of each and the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np

from bench.machine import provenance
from serving.engine.sampling import SamplingParams, make_rng, sample_batch

SETTINGS = {
    "greedy": [dict(temperature=0.0)],
    "temperature 1": [dict(temperature=1.0)],
    "top-k 40": [dict(temperature=1.0, top_k=40)],
    "top-p 0.9": [dict(temperature=1.0, top_p=0.9)],
    "top-k 40 + top-p 0.95": [dict(temperature=0.8, top_k=40, top_p=0.95)],
    "mixed": [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.7, top_k=40),
              dict(temperature=1.0, top_p=0.9)],
}


def before(logits: np.ndarray, params: Sequence[SamplingParams], rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """The sampler as it was at commit cd5b9ca (serving/engine/sampling.py), kept to compare."""
    tokens = logits.argmax(-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not rows:
        return tokens
    u = np.array([rngs[i].random() for i in rows])
    temperature = np.array([params[i].temperature for i in rows])
    top_k = np.array([params[i].top_k for i in rows])
    top_p = np.array([params[i].top_p for i in rows])
    x = logits[rows].astype(np.float64) / temperature[:, None]
    vocab = x.shape[1]
    filtered = ((top_k > 0) & (top_k < vocab)) | (top_p < 1.0)
    order = np.broadcast_to(np.arange(vocab), x.shape)
    if filtered.any():
        f = np.flatnonzero(filtered)
        ranked = np.argsort(-x[f], axis=1, kind="stable")
        x[f] = np.take_along_axis(x[f], ranked, axis=1)
        order = order.copy()
        order[f] = ranked
    probs = np.exp(x - x.max(axis=1, keepdims=True))
    k = np.where((top_k > 0) & filtered, top_k, vocab)
    probs[np.arange(vocab)[None] >= k[:, None]] = 0.0
    cum = np.cumsum(probs, axis=1)
    nucleus = (cum - probs) >= (top_p * cum[:, -1])[:, None]
    probs[nucleus & filtered[:, None]] = 0.0
    cum = np.cumsum(probs, axis=1)
    pick = np.minimum((cum <= (u * cum[:, -1])[:, None]).sum(axis=1), vocab - 1)
    tokens[rows] = order[np.arange(len(rows)), pick]
    return tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sampler_speed", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[32], help="rows per step")
    p.add_argument("--vocab", type=int, nargs="+", default=[2000, 50000])
    p.add_argument("--repeats", type=int, default=100)
    args = p.parse_args(argv)
    out = []
    for vocab in args.vocab:
        for rows in args.rows:
            logits = np.random.default_rng(rows).normal(0, 3, (rows, vocab)).astype(np.float32)
            for name, kinds in SETTINGS.items():
                params = [SamplingParams(**kinds[i % len(kinds)]) for i in range(rows)]
                old_rngs = [np.random.default_rng(i) for i in range(rows)]
                new_rngs = [make_rng(i) for i in range(rows)]
                times: dict[str, list[float]] = {"before": [], "after": []}
                for i in range(args.repeats + 3):
                    for side, f, rngs in (("before", before, old_rngs), ("after", sample_batch, new_rngs)):
                        t0 = time.perf_counter()
                        f(logits, params, rngs)
                        if i >= 3:   # warm-up
                            times[side].append(time.perf_counter() - t0)
                a, b = (1e6 * statistics.median(times[s]) for s in ("before", "after"))
                out.append((vocab, rows, name, a, b))
    print(f"\n{provenance('python -m bench.sampler_speed', argv)}\n")
    print(f"median of {args.repeats}, interleaved; logits random normal (scale 3), float32\n")
    print("| vocab | rows | sampling | before, µs | after, µs | speed-up |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for vocab, rows, name, a, b in out:
        print(f"| {vocab} | {rows} | {name} | {a:,.0f} | {b:,.0f} | {a / b:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
