"""Where serving's time goes: the same workload through each layer of the stack, in one run.

    .venv/bin/python bench/serving_overhead.py [--streams 1 32] [--seconds 20] [--rounds 2] [--model trained|random]

n streams, each a 64-token prompt and 128 greedy new tokens, again and again, through:

- graph: prefill, then Runtime.decode (what the engine calls: the batch cut into one
  single-threaded slice per core)
- engine: serving.engine.core.Engine in this process, its events dropped (slots, sampling,
  stop checks, per-request text, metrics off)
- server: `python -m serving` over gRPC and over HTTP/SSE, n streaming clients in this
  process (as bench/load.py runs them, on the same cores)

each with ONNX Runtime's pool threads spinning within a call (`--ort-spin call`, the default) and
sleeping between kernels (`--ort-spin off`). Variants take turns in `--rounds` rounds, so a burst of load on a
shared machine hits all alike; tokens/s is over all rounds. Compare ratios within one run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import queue
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.clients import grpc_streams, openai_streams  # noqa: E402
from bench.load import start_server  # noqa: E402
from core.net import free_port  # noqa: E402
from bench.models import bench_model  # noqa: E402
from core.artifact import Artifact, load_artifact  # noqa: E402
from serving.engine.core import Engine, EngineConfig  # noqa: E402
from serving.engine.runtime import Runtime  # noqa: E402
from serving.engine.sampling import SamplingParams  # noqa: E402


PROMPT_TOKENS, NEW_TOKENS = 64, 128
COMPARED = ("off", "call")   # --ort-spin: pool threads sleeping between kernels, spinning within a call


def graph(rt: Runtime, n: int, seconds: float) -> int:
    """Greedy streams straight on the runtime: tokens generated in `seconds`."""
    prompts = np.random.default_rng(n).integers(0, rt.vocab, (n, PROMPT_TOKENS)).tolist()
    end, tokens = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        logits, lengths = rt.prefill(0, prompts), np.full(n, PROMPT_TOKENS)
        for _ in range(NEW_TOKENS - 1):
            logits = rt.decode(logits.argmax(-1), lengths)
            lengths += 1
        tokens += n * NEW_TOKENS
    return tokens


class InProcess:
    """An Engine on its own runtime, events counted and dropped."""

    def __init__(self, art: Artifact, rt: Runtime, prompts: list[str]):
        self.tokens, self.finished = 0, queue.Queue()

        def publish(batch):
            for _, ev in batch:
                self.tokens += len(ev.token_ids)
                if ev.finish_reason:
                    self.finished.put(1)
        self.engine = Engine(art, EngineConfig(max_batch=64), rt, publish)
        self.engine.warmup()
        self.engine.start()
        self.prompts, self.turn = prompts, 0

    def submit(self, params: SamplingParams) -> None:
        self.turn += 1
        self.engine.submit(self.prompts[self.turn % len(self.prompts)], params)

    def run(self, n: int, seconds: float) -> int:
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
        start, end = self.tokens, time.perf_counter() + seconds
        for _ in range(n):
            self.submit(params)
        while time.perf_counter() < end:
            self.finished.get()
            self.submit(params)
        done = self.tokens - start
        for _ in range(n):   # let the last ones finish untimed, so rounds do not overlap
            self.finished.get()
        return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/serving_overhead.py", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seconds", type=float, default=20.0, help="per variant and stream count, over all rounds "
                   "(a window ends when its last requests do: short ones undercount the servers)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: the server's default)")
    p.add_argument("--model", default="trained", choices=("trained", "random"), help="bench/models.py")
    a = p.parse_args(argv)
    model = bench_model(a.model)
    art_dir, prompts = model.onnx, model.prompts(PROMPT_TOKENS, 400)
    art = load_artifact(art_dir)
    rts = {spin: Runtime(art, "cpu", a.threads, "fp32", slots=64, spin=spin) for spin in COMPARED}
    graph_rts = {spin: Runtime(art, "cpu", a.threads, "fp32", slots=64, spin=spin) for spin in COMPARED}
    engines = {spin: InProcess(art, rt, prompts) for spin, rt in rts.items()}
    http = {spin: free_port() for spin in COMPARED}
    servers = {spin: start_server(art_dir, ["--max-batch", "64", "--threads", str(a.threads),
                                            "--ort-spin", spin], http[spin]) for spin in COMPARED}
    variants = {}
    for spin in COMPARED:
        variants[("graph", spin)] = lambda n, s, spin=spin: graph(graph_rts[spin], n, s)
        variants[("engine", spin)] = lambda n, s, spin=spin: engines[spin].run(n, s)
        variants[("server, gRPC", spin)] = lambda n, s, spin=spin: asyncio.run(
            grpc_streams(servers[spin][1], n, s, prompts, NEW_TOKENS, temperature=0.0)).tokens
        variants[("server, HTTP", spin)] = lambda n, s, spin=spin: asyncio.run(
            openai_streams(f"http://127.0.0.1:{http[spin]}", n, s, prompts, NEW_TOKENS, temperature=0.0)).tokens
    try:
        print(f"{os.cpu_count()} CPUs, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {art.config.n_layer} "
              f"layers, {art.config.n_head * art.config.head_dim} wide; {PROMPT_TOKENS}-token prompts, {NEW_TOKENS} new tokens, greedy; "
              f"{a.seconds:.0f} s per variant in {a.rounds} interleaved rounds; ORT threads {a.threads or 'default'}\n")
        print("| streams | path | tok/s, --ort-spin off | tok/s, --ort-spin call | call vs off "
              "| off vs graph | call vs graph |")
        print("| ---: | :--- | ---: | ---: | ---: | ---: | ---: |")
        for n in a.streams:
            tokens, wall = dict.fromkeys(variants, 0), dict.fromkeys(variants, 0.0)
            for _ in range(a.rounds):
                for k, fn in variants.items():
                    t = time.perf_counter()
                    tokens[k] += fn(n, a.seconds / a.rounds)
                    wall[k] += time.perf_counter() - t
            rate = {k: tokens[k] / wall[k] for k in variants}
            for name in dict.fromkeys(k for k, _ in variants):
                off, on = rate[(name, 'off')], rate[(name, 'call')]
                print(f"| {n} | {name} | {off:,.0f} | {on:,.0f} | {on / off:.2f}x | "
                      f"{off / rate[('graph', 'off')]:.2f}x | {on / rate[('graph', 'call')]:.2f}x |", flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait()
        for e in engines.values():
            e.engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
