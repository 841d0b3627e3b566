"""Time to loss: how long `cpu-small` takes to reach the loss it reached before issue #11.

    python bench/train_speed.py --time-to-loss [--corpus PATH] [--precision fp32] [--repeats 2]

Each recipe is a real `python -m training.train` process, so start-up (imports, corpus,
tokenizer, model) counts. The target is the final validation loss of BEFORE, cpu-small
as it was (AdamW, batch 12, 2000 steps); the same run measures it. A recipe's time to the
target is read from its metrics.jsonl: `wall_s` (seconds since its process started) minus
`eval_s` (seconds spent in evaluations so far), interpolated linearly between the two
evaluations around the crossing. The bench evaluates both recipes ~`--evals` times on the
same `--val-windows` validation windows (spread evenly over the split), far more often
than `make train` does; those pauses are the instrument, not the recipe, so they are left
out for both. Both recipes get the same --precision (fp32 by default: the speed-up must not
come from bf16, which many CPUs lack) and --threads. Runs alternate (A B, B A, ...) so load
from other processes hits both alike.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from training.config import PRESETS
from training.run_files import read_metrics

ROOT = Path(__file__).resolve().parent.parent
# cpu-small before issue #11 (the preset's values then): the baseline, kept runnable here.
BEFORE = dict(optimizer="adamw", batch_size=12, max_iters=2000, lr=2e-3, min_lr=2e-4, warmup_iters=100)
RECIPES = {"before": BEFORE, "now": {}}          # "now" is the cpu-small preset as it is


@dataclass
class Result:
    recipe: str
    repeat: int
    settings: dict
    rows: list[dict] = field(default_factory=list)
    process_s: float = 0.0           # spawn to exit, evaluations included

    def curve(self) -> list[tuple[float, float]]:
        """(seconds since process start without evaluation pauses, val loss) per evaluation."""
        return [(r["wall_s"] - r["eval_s"], r["val_loss"]) for r in self.rows]

    def time_to(self, target: float) -> float | None:
        prev = None
        for t, loss in self.curve():
            if loss <= target:
                if prev is None:
                    return t
                t0, l0 = prev
                return t0 + (t - t0) * (l0 - target) / (l0 - loss)
            prev = (t, loss)
        return None


def argv_of(flags: dict) -> list[str]:
    return [item for k, v in flags.items() for item in (f"--{k.replace('_', '-')}", str(v))]


def run_recipe(name: str, repeat: int, overrides: dict, args, out: Path) -> Result:
    settings = {**PRESETS["cpu-small"], **overrides}
    settings["max_iters"] = max(2, round(settings["max_iters"] * args.fraction))
    batch, iters = settings["batch_size"], settings["max_iters"]
    if args.val_windows % batch:
        raise UserError(f"--val-windows {args.val_windows} must be a multiple of every recipe's batch ({batch})")
    flags = {**overrides, "max_iters": iters, "corpus": args.corpus, "precision": args.precision, "threads": args.threads,
             "eval_interval": max(1, iters // args.evals), "eval_iters": args.val_windows // batch,
             "sample_tokens": 0, "patience": 0, "out": out}
    cmd = [sys.executable, "-m", "training.train", "--preset", "cpu-small", *argv_of(flags)]
    print(f"[{name} #{repeat + 1}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result = Result(name, repeat, settings, process_s=time.perf_counter() - t0)
    if proc.returncode != 0:
        raise UserError(f"{name} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    result.rows = read_metrics(out)
    return result


def run_all(args) -> list[Result]:
    tmp = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="time-to-loss-"))
    results = []
    try:
        for repeat in range(args.repeats):
            order = list(RECIPES.items())
            for name, overrides in (order if repeat % 2 == 0 else order[::-1]):
                out = tmp / f"{name}-{repeat + 1}"
                shutil.rmtree(out, ignore_errors=True)
                results.append(run_recipe(name, repeat, overrides, args, out))
    finally:
        if not args.out:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def report(results: list[Result], args) -> None:
    before = {r.repeat: r for r in results if r.recipe == "before"}
    print(f"\ncorpus {args.corpus}, --precision {args.precision}, --threads {args.threads or 'default'}; "
          f"target = BEFORE's final val loss (same run); evaluations left out of the times\n")
    print("| recipe | run | optimizer | batch | steps | start-up s | time to target s | vs before | "
          "final val loss | process s |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios = []
    for r in results:
        target = before[r.repeat].rows[-1]["val_loss"]
        t, t_before = r.time_to(target), before[r.repeat].time_to(target)
        ratio = t / t_before if t is not None else None
        if ratio is not None and r.recipe == "now":
            ratios.append(ratio)
        s = r.settings
        print(f"| {r.recipe} | {r.repeat + 1} | {s['optimizer']} | {s['batch_size']} | {s['max_iters']} | "
              f"{r.curve()[0][0]:.1f} | {'never' if t is None else f'{t:.1f}'} | "
              f"{'-' if ratio is None else f'{ratio:.2f}x'} | {r.rows[-1]['val_loss']:.4f} | {r.process_s:.0f} |")
    if ratios:
        print(f"\nnow / before, time to BEFORE's final loss: {statistics.median(ratios):.2f}x "
              f"(median of {len(ratios)} run{'s' if len(ratios) > 1 else ''})")
    print("time to target: seconds from process start to the first crossing of the target, linearly "
          "interpolated between evaluations, minus the bench's evaluation pauses; start-up: the same at "
          "the first evaluation (imports, corpus, tokenizer, model).")


def main(args) -> int:
    if args.repeats < 1 or args.evals < 2 or args.val_windows < 1 or not 0 < args.fraction <= 1:
        raise UserError("--repeats must be >= 1, --evals >= 2, --val-windows >= 1, 0 < --fraction <= 1")
    report(run_all(args), args)
    return 0
