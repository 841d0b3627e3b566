"""The ladder: GPT-2's block to the modern one, one change at a time, at equal wall time.

    python -m bench.ladder                                         # shakespeare and kjv.txt, 20 s a rung
    python -m bench.ladder --corpus shakespeare --seconds 60 --seeds 2
    python -m bench.ladder --results runs/ladder.jsonl --seed-offset 1   # a second call adds a seed

Each rung is the `cpu-small` preset (4 layers, 4 heads, 128 wide, context 64, byte-level BPE
2,000, Muon) with one more piece of the modern block than the rung above: GPT-2's block,
rotary positions (which also drops the biases and the learned position table), RMSNorm, a
gated MLP (SwiGLU, 8/3 wide: the same weights as GPT-2's 4x MLP), QK-norm, grouped KV heads
(2 for 4 query heads), an untied output head: the last is `--model qwen3 --n-kv-head 2
--no-tie-embeddings`. Each trains as its own `python -m training.train --time-budget
SECONDS` process, one at a time on the same cores, so every rung gets the same wall time
(start-up, its two evaluations and its files included: training/budget.py), whatever its
step costs. The tokenized corpus is cached before the first rung, so none pays for it.
Then each best checkpoint is scored here, untimed, on the same validation text: the first
`--val-tokens` tokens of the corpus's validation split (its last 10% of characters) in
non-overlapping windows of the context, bits per character. Rungs run forwards for even
seeds and backwards for odd ones, so a drift in the machine's speed does not favour one end.

A second corpus that picked nothing: the King James Bible from Debian's `bible-kjv`
(`apt-get install bible-kjv && bible gen1:1-rev22:21 > kjv.txt`; bench/README.md). Without
it (no kjv.txt where --corpus says) that corpus is skipped with a line saying how to get it.
`--results FILE` keeps every run's row (JSON lines) and the table is made from all rows of
the same corpus, seconds and preset in it, so calls that each fit a few minutes add seeds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.machine import describe_cpu  # noqa: E402
from bench.nanogpt_ref import text_bits_per_char  # noqa: E402
from core.errors import UserError, run_main  # noqa: E402
from core.run_dir import read_summary  # noqa: E402
from training.checkpoint import load_run  # noqa: E402
from training.config import parse_flags, resolve  # noqa: E402
from training.corpus_cache import Corpus, cached_ids, cached_tokenizer  # noqa: E402
from training.tokenizer import char_counts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QWEN = ["--model", "qwen3", "--n-kv-head", "0"]   # one KV head per query head until its rung
# (name, what it adds, flags over the preset): each rung is the one above plus one change.
RUNGS = [
    ("GPT-2", "learned positions, LayerNorm, GELU MLP, biases, tied head", ["--model", "gpt"]),
    ("+rotary", "rotary positions; no biases, no position table", QWEN + ["--norm", "layer", "--mlp", "gelu", "--no-qk-norm"]),
    ("+RMSNorm", "RMSNorm for LayerNorm", QWEN + ["--mlp", "gelu", "--no-qk-norm"]),
    ("+gated MLP", "SwiGLU, 8/3 wide, for GELU 4x", QWEN + ["--no-qk-norm"]),
    ("+QK-norm", "RMSNorm on each head's q and k", QWEN),
    ("+grouped KV", "2 key/value heads for 4 query heads", QWEN + ["--n-kv-head", "2"]),
    ("+untied head", "an output matrix of its own", QWEN + ["--n-kv-head", "2", "--no-tie-embeddings"]),
]
KJV_HOWTO = "apt-get install bible-kjv && bible gen1:1-rev22:21 > kjv.txt"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def prime(corpus: str, preset: str, extra: list[str]) -> None:
    """Tokenize the corpus now, as the rungs will (cached for their processes)."""
    _, tc = resolve(parse_flags(extra)[0], preset)
    cached_ids(Corpus(corpus), cached_tokenizer(Corpus(corpus), tc.tokenizer, tc.vocab_size))


def budgeted_run(what: str, preset: str, corpus: str, seconds: float, out: Path,
                 flags: list[str], show: bool = False) -> tuple[dict, float]:
    """Train one `--time-budget` process into `out`: (its summary.json, the process's seconds);
    `show` prints its command line first."""
    cmd = [sys.executable, "-m", "training.train", "--preset", preset, "--corpus", corpus,
           "--time-budget", str(seconds), "--out", str(out), *flags]
    if show:
        print(f"  $ {' '.join(shlex.quote(c) for c in cmd[1:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise UserError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return read_summary(out), wall


def train_rung(corpus: str, rung: int, seed: int, args, work: Path) -> dict:
    name, _, flags = RUNGS[rung]
    out = work / f"{Path(corpus).name}-{rung}-{seed}"
    s, wall = budgeted_run(f"rung {name}", args.preset, corpus, args.seconds, out,
                           ["--seed", str(seed), "--sample-tokens", "0", "--eval-interval", "1000000000",
                            "--patience", "0", *flags, *args.extra])
    return {"corpus": Path(corpus).name, "rung": rung, "name": name, "seed": seed, "seconds": args.seconds,
            "preset": args.preset, "extra": args.extra, "params": s["params"], "iters": s["iters"],
            "tokens_per_s": s["tokens_per_s"], "run_s": s["run_s"], "process_s": round(wall, 2), "out": str(out)}


def score(row: dict, corpus: str, n_tokens: int) -> float:
    """Bits per character of the run's best model on the first n_tokens of the validation split."""
    model, config, tok = load_run(row["out"])
    val = torch.from_numpy(cached_ids(Corpus(corpus), tok)[1].astype("int64"))
    row["val_tokens"] = min(n_tokens, len(val) - 1)
    with torch.no_grad():
        return text_bits_per_char(lambda x: model(x)[0], val[:n_tokens + 1], char_counts(tok),
                                  config.block_size)["val_bpc"]


def table(rows: list[dict], corpus: str) -> None:
    by_rung: dict[int, list[dict]] = {}
    for r in rows:
        by_rung.setdefault(r["rung"], []).append(r)
    print(f"\n{corpus}: {len({r['seed'] for r in rows})} seed(s), {rows[0]['seconds']:g} s a rung "
          f"(--preset {rows[0]['preset']}{' ' + ' '.join(rows[0]['extra']) if rows[0]['extra'] else ''})")
    print("| rung | adds | params | steps | tokens/s | val bits/char | vs GPT-2 | vs the rung above |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    mean = {k: statistics.mean(r["val_bpc"] for r in v) for k, v in by_rung.items()}
    for k in sorted(by_rung):
        v = by_rung[k]
        bpcs = [r["val_bpc"] for r in v]
        spread = f" ({min(bpcs):.3f}-{max(bpcs):.3f})" if len(bpcs) > 1 else ""
        first, above = mean.get(0), mean.get(k - 1)
        print(f"| {RUNGS[k][0]} | {RUNGS[k][1]} | {v[0]['params'] / 1e6:.2f}M | {statistics.mean(r['iters'] for r in v):.0f} | "
              f"{statistics.mean(r['tokens_per_s'] for r in v):,.0f} | {mean[k]:.3f}{spread} | "
              f"{'-' if first is None or k == 0 else f'{mean[k] - first:+.3f}'} | "
              f"{'-' if above is None else f'{mean[k] - above:+.3f}'} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ladder", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", nargs="+", default=["shakespeare", "kjv.txt"])
    p.add_argument("--seconds", type=float, default=20.0, help="--time-budget of every rung (default 20)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per rung in this call (default 1)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed is 1337 + this (a later call's)")
    p.add_argument("--rungs", type=int, nargs="+", default=list(range(len(RUNGS))), help="rung numbers, 0 = GPT-2")
    p.add_argument("--val-tokens", type=int, default=32768, help="validation tokens scored (default 32768)")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--extra", default="", help="more trainer flags for every rung, one string")
    p.add_argument("--results", help="JSON-lines file: rows are added, and the tables use every row in it")
    p.add_argument("--out", help="keep the run dirs here (default: a temporary dir)")
    args = p.parse_args(argv)
    args.extra = shlex.split(args.extra)
    if args.seconds <= 0 or args.seeds < 1 or any(not 0 <= r < len(RUNGS) for r in args.rungs):
        raise UserError(f"--seconds must be > 0, --seeds >= 1, --rungs within 0..{len(RUNGS) - 1}")
    corpora = []
    for c in args.corpus:
        if c in ("shakespeare", "frankenstein") or Path(c).exists():
            corpora.append(str(Path(c).resolve()) if Path(c).exists() else c)
        else:
            print(f"skipping {c}: no such file (the King James Bible: {KJV_HOWTO})", file=sys.stderr)
    print(f"command: python -m bench.ladder {' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | commit: {commit()}")
    print(f"machine: {describe_cpu()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}", flush=True)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ladder-"))
    kept = [json.loads(line) for line in Path(args.results).read_text().splitlines()] \
        if args.results and Path(args.results).is_file() else []
    for corpus in corpora:
        prime(corpus, args.preset, args.extra)
        new = []
        for s in range(args.seeds):
            seed = 1337 + args.seed_offset + s
            order = args.rungs if (args.seed_offset + s) % 2 == 0 else args.rungs[::-1]
            for rung in order:
                row = train_rung(corpus, rung, seed, args, work)
                row["val_bpc"] = round(score(row, corpus, args.val_tokens), 5)
                print(f"  {Path(corpus).name} seed {seed} {row['name']}: {row['iters']} steps, "
                      f"{row['val_bpc']:.3f} bits/char, process {row['process_s']:.1f} s", file=sys.stderr, flush=True)
                new.append(row)
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(row) + "\n")
        same = [r for r in kept + new if r["corpus"] == Path(corpus).name and r["seconds"] == args.seconds
                and r["preset"] == args.preset and r["extra"] == args.extra]
        table(same, Path(corpus).name)
    print(f"\nbits/char: the best checkpoint of each rung on the first {args.val_tokens:,} tokens of the "
          f"validation split (the corpus's last 10%), non-overlapping windows; steps and tokens/s from the "
          f"trainer's summary.json; each rung a `python -m training.train --time-budget {args.seconds:g}` "
          f"process alone on the machine.")
    return 0


if __name__ == "__main__":
    run_main(main)
