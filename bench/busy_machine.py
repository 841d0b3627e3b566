"""Training beside busy processes: idle, one and two busy loops, before and after, in one run.

    python bench/busy_machine.py                     # cpu-small's step, 24 steps a measurement
    python bench/busy_machine.py --steps 40 --rounds 3

A learner's machine is rarely idle. Here the bench itself starts 0, 1 or 2 plain Python
busy loops (`while True: pass`) and, beside them, times `--steps` training steps of the
cpu-small preset (its shape, batch, optimizer and precision; random token ids, since speed
does not depend on the text) in a fresh process per measurement, three ways:
- before: torch's own intra-op threads (OpenMP, torch's default count), the trainer's step
  before training/workers.py and still its step for DDP, CUDA and dropout;
- after: the trainer's CPU default, worker threads that each train a slice of every batch
  with single-threaded operations (one per core);
- one thread: `--threads 1`.
Variants take turns within each round (the order alternates), so drifting load hits all
alike. The table gives each median time and its ratio to the same variant's idle time (a
fair share of 2 cores is <= 1.5x beside one busy process, <= 2x beside two) and to
before's idle time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

VARIANTS = {"before: torch's threads": {"split_by_data": False, "threads": 0},
            "after: worker threads (default)": {"split_by_data": None, "threads": 0},
            "one thread (--threads 1)": {"split_by_data": None, "threads": 1}}


def child(variant: str, steps: int, flags: dict) -> dict:
    """In a fresh process: build the trainer's Run for cpu-small, time `steps` train_steps."""
    import numpy as np
    import torch

    from core.model_config import ModelConfig
    from training.config import resolve
    from training.device import Distributed
    from training.train import Data, build, train_step

    v = VARIANTS[variant]
    model_fields, tc = resolve({**flags, "threads": v["threads"]}, "cpu-small")
    ids = torch.randint(0, tc.vocab_size, (500_000,), generator=torch.Generator().manual_seed(0))
    data = Data(None, ids, ids[:50_000], np.ones(tc.vocab_size, dtype=np.int64))
    run, _ = build(tc, ModelConfig(vocab_size=tc.vocab_size, **model_fields), data, None,
                   Distributed(torch.device("cpu")), split_by_data=v["split_by_data"])
    for it in range(3):                                   # warm-up: allocations, lazy inits
        train_step(run, it)
    t0, c0 = time.perf_counter(), time.process_time()
    for it in range(3, 3 + steps):
        train_step(run, it)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if run.workers:
        run.workers.close()
    return {"wall_s": wall, "cpu_s": cpu, "threads": torch.get_num_threads(),
            "workers": run.workers.n if run.workers else 0}


def measure(variant: str, args) -> dict:
    flags = {**json.loads(args.flags), **({"precision": args.precision} if args.precision else {})}
    cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps), "--flags", json.dumps(flags)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed: {proc.stderr.strip().splitlines()[-3:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    from bench.machine import describe_cpu
    return f"{describe_cpu()}, load average {os.getloadavg()[0]:.1f} at the start"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/busy_machine.py", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=24, help="timed training steps per measurement (default 24)")
    p.add_argument("--rounds", type=int, default=2, help="measurements of each variant and load (default 2)")
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="busy loops beside it (default 0 1 2)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], help="default: the preset's")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--flags", default="{}", help=argparse.SUPPRESS)     # preset overrides (tests: a tiny model)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, json.loads(args.flags))))
        return 0
    if args.steps < 1 or args.rounds < 1 or 0 not in args.busy:
        raise SystemExit("--steps and --rounds must be >= 1, and --busy must include 0 (the idle baseline)")
    print(f"{machine()}; cpu-small, {args.steps} steps a measurement, {args.rounds} rounds", flush=True)
    times: dict[tuple[str, int], list[float]] = {}
    names = list(VARIANTS)
    for busy in args.busy:
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(0.5)
            for r in range(args.rounds):
                for name in (names if r % 2 == 0 else names[::-1]):
                    result = measure(name, args)
                    times.setdefault((name, busy), []).append(result["wall_s"])
                    print(f"  {busy} busy, {name}: {result['wall_s']:.1f} s, {result['cpu_s'] / result['wall_s']:.2f} "
                          f"cores ({result['workers']} workers, {result['threads']} torch threads)",
                          file=sys.stderr, flush=True)
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
    median = {k: statistics.median(v) for k, v in times.items()}
    before_idle = median[(names[0], 0)]
    print("\n| variant | " + " | ".join(f"{b} busy s (x its idle)" for b in args.busy) + " | idle vs before |")
    print("| --- | " + " | ".join("---:" for _ in args.busy) + " | ---: |")
    for name in names:
        idle = median[(name, 0)]
        cells = [f"{median[(name, b)]:.1f} ({median[(name, b)] / idle:.2f}x)" for b in args.busy]
        print(f"| {name} | " + " | ".join(cells) + f" | {idle / before_idle:.2f}x |")
    print(f"\nmedian of {args.rounds} per cell; all runs: "
          + "; ".join(f"{n.split(':')[0]} {b} busy {[round(t, 1) for t in v]}" for (n, b), v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
