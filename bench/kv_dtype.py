"""The KV cache in fp16 instead of fp32: what it saves, what parity and speed it costs, in one run.

    python -m bench.kv_dtype                          # the 3.7M bench model, 32 rows, 100 steps
    python -m bench.kv_dtype --size 87M --rows 1 16 --steps 40

Why: the cache is most of a server's memory at 64 slots of a large context (issue 25: 87M,
64 x 1,024 tokens, 4.8 GB in fp32), and llama.cpp keeps its cache in f16. ONNX Runtime's CPU
GroupQueryAttention takes fp16 past/present buffers; the graph then casts q, k, v to fp16
before attention and its output back to fp32 (everything else stays fp32). This rewrites a
copy of the bench model's artifact that way (`kv16`, with onnx), runs both through the
serving runtime (which reads the cache's dtype from the graph), prefills the same 64-token
prompts, then decodes `--steps` greedy steps of the fp32 model's tokens on both, and prints
the largest logit difference, how often the top token agrees, and the median step time of
each at each row count, interleaved.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import provenance


def kv16(src: Path, dst: Path) -> None:
    """Copy artifact `src` to `dst` with model.onnx's attention reading an fp16 KV cache."""
    import onnx
    from onnx import TensorProto, helper

    shutil.copytree(src, dst)
    m = onnx.load(src / "model.onnx")
    nodes = []
    for n in m.graph.node:
        if n.op_type != "GroupQueryAttention":
            nodes.append(n)
            continue
        ins, outs = list(n.input), list(n.output)
        for i in [0, 1, 2, *range(7, len(ins))]:   # q (packed), k, v; qwen3's cos/sin caches
            if i < len(ins) and ins[i]:
                nodes.append(helper.make_node("Cast", [ins[i]], [ins[i] + ".f16"], to=TensorProto.FLOAT16))
                ins[i] += ".f16"
        attn = helper.make_node("GroupQueryAttention", ins, [outs[0] + ".f16", *outs[1:]], domain=n.domain)
        attn.attribute.extend(n.attribute)
        nodes += [attn, helper.make_node("Cast", [outs[0] + ".f16"], [outs[0]], to=TensorProto.FLOAT)]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    for v in [*m.graph.input, *m.graph.output]:
        if v.name.startswith(("past_key_values", "present")):
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(m, dst / "model.onnx")
    manifest = json.loads((dst / "manifest.json").read_text())
    data = (dst / "model.onnx").read_bytes()
    manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kv_dtype", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="3.7M", choices=("3.7M", "11.5M", "87M"), help="bench/models.py")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 32])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="cores (0 = all); the calibrated spread decides")
    args = p.parse_args(argv)

    from bench.models import bench_model
    from core.artifact import load_artifact
    from serving.engine.runtime import Runtime

    src = bench_model("trained", args.size).onnx
    with tempfile.TemporaryDirectory() as d:
        kv16(src, Path(d) / "kv16")
        rows = max(args.rows)
        arts = {"fp32": load_artifact(src), "fp16": load_artifact(Path(d) / "kv16")}
        rts = {k: Runtime(a, "cpu", args.threads, slots=rows) for k, a in arts.items()}
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
    print(f"model {args.size} (bench/models.py); {rows} rows of 64-token prompts, then {steps} greedy steps on both "
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
