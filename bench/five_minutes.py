"""Five minutes on this machine's cores: what a `--time-budget` run reaches, on the whole validation text.

    python -m bench.five_minutes --corpus tinyshakespeare.txt               # the cpu-5min preset, 300 s
    python -m bench.five_minutes --corpus tinyshakespeare.txt --seconds 60 --recipes "" "--n-layer 6"

Issue 26's target: five minutes on 2 CPU cores reach <= 2.12 bits per character on
tinyshakespeare (nanoGPT's 1.1M-character text, its last 10% as validation), what nanoGPT's
shakespeare-char recipe reaches on an A100 in about three minutes (val loss 1.4697 nats per
character, its README). Each recipe (`--preset` plus one string of flags from `--recipes`)
trains as `python -m training.train --time-budget SECONDS` in its own process, one at a time;
the process's wall time, start to exit, is printed beside the budget. Its best checkpoint is
then scored, untimed, on every token of the validation split (the corpus's last 10% of
characters, as the trainer splits it) in non-overlapping windows of its context: bits per
character, the number the target names. The trainer's own figure (a sample of validation
batches) is shown too.

tinyshakespeare is not in any registry this project may use; the file kept outside the repo
for this figure is karpathy/char-rnn's data/tinyshakespeare/input.txt, 1,115,394 characters,
sha256 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.ladder import budgeted_run, commit  # noqa: E402
from bench.machine import describe_cpu  # noqa: E402
from bench.nanogpt_ref import text_bits_per_char  # noqa: E402
from core.errors import UserError, run_main  # noqa: E402
from training.checkpoint import load_run  # noqa: E402
from training.corpus_cache import Corpus, cached_ids  # noqa: E402
from training.tokenizer import char_counts  # noqa: E402

TARGET_BPC = 2.12       # 1.4697 nats per character / ln 2


def whole_val_bpc(run: Path, corpus: str) -> tuple[float, int]:
    model, config, tok = load_run(run)
    val = torch.from_numpy(cached_ids(Corpus(corpus), tok)[1].astype("int64"))
    with torch.no_grad():
        r = text_bits_per_char(lambda x: model(x)[0], val, char_counts(tok), config.block_size)
    return r["val_bpc"], r["tokens"]


def describe(corpus: str) -> str:
    path = Path(corpus)
    if not path.is_file():
        return corpus
    data = path.read_bytes()
    return f"{path.name} ({len(data.decode('utf-8')):,} characters, sha256 {hashlib.sha256(data).hexdigest()[:12]}...)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.five_minutes", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="shakespeare", help="a corpus name or .txt path (tinyshakespeare: a file)")
    p.add_argument("--seconds", type=float, default=300.0, help="--time-budget of each run (default 300)")
    p.add_argument("--preset", default="cpu-5min")
    p.add_argument("--recipes", nargs="+", default=[""], help="flags over the preset, one string per run")
    p.add_argument("--target", type=float, default=TARGET_BPC, help="bits per character to reach (default 2.12)")
    p.add_argument("--out", help="keep the run dirs here (default: a temporary dir)")
    args = p.parse_args(argv)
    if args.seconds <= 0:
        raise UserError("--seconds must be > 0")
    corpus = str(Path(args.corpus).resolve()) if Path(args.corpus).exists() else args.corpus
    print(f"command: python -m bench.five_minutes {' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | commit: {commit()}")
    print(f"machine: {describe_cpu()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"corpus: {describe(corpus)}", flush=True)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="five-minutes-"))
    rows = []
    for i, recipe in enumerate(args.recipes):
        out = work / f"run-{i}"
        s, wall = budgeted_run("the run", args.preset, corpus, args.seconds, out, shlex.split(recipe), show=True)
        bpc, tokens = whole_val_bpc(out, corpus)
        rows.append((recipe, s, wall, bpc, tokens))
        print(f"  {recipe or '(preset)'}: {s['iters']} steps, {bpc:.3f} bits/char, process {wall:.1f} s",
              file=sys.stderr, flush=True)
    print(f"\n| recipe (--preset {args.preset} +) | model | params | steps | tokens/s | run_s | process s | "
          f"trainer's val bpc | whole val bpc | <= {args.target}? |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for recipe, s, wall, bpc, tokens in rows:
        mc = s["model_config"]
        print(f"| {recipe or '-'} | {mc['model']} {mc['n_layer']}x{mc['n_embd']}, context {mc['block_size']} | "
              f"{s['params'] / 1e6:.2f}M | {s['iters']} | {s['tokens_per_s']:,.0f} | {s['run_s']:.1f} | {wall:.1f} | "
              f"{s['best_val_bpc']:.3f} | **{bpc:.3f}** | {'yes' if bpc <= args.target else f'no, +{bpc - args.target:.3f}'} |")
    print(f"\nwhole val bpc: the best checkpoint on all {rows[0][4]:,} validation tokens (the corpus's last 10%), "
          f"non-overlapping windows of the context; process s: the training command's start to its exit "
          f"(budget {args.seconds:g} s).")
    return 0


if __name__ == "__main__":
    run_main(main)
