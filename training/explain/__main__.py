"""Command line of explain: write the HTML report, or print the step-by-step table (--text).

    python -m training.explain --run runs/default --prompt "ROMEO:" --out reports/explain
    python -m training.explain --run runs/default --prompt "ROMEO:" --text
    make explain RUN=runs/default PROMPT="ROMEO:"
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import UserError, run_main
from core.files import atomic_write, ensure_writable_dir

REPORT_NAME = "index.html"


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python -m training.explain", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="training run dir (ckpt.pt, tokenizer.json, metrics.jsonl)")
    p.add_argument("--prompt", required=True, help="text the model continues; the report explains it")
    p.add_argument("--out", help=f"report dir; the page is OUT/{REPORT_NAME} (not needed with --text)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = always the top token")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bigram-run", help="a bigram run dir: its loss is drawn beside this run's")
    p.add_argument("--text", action="store_true", help="print the step-by-step table instead of a report")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.prompt:
        raise UserError("--prompt is empty; give the text to continue, e.g. --prompt 'ROMEO:'")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = no limit), got {args.top_k}")
    if not args.text and not args.out:
        raise UserError("--out DIR is required to write the report (or pass --text for a table)")
    if not Path(args.run).is_dir():
        raise UserError(f"run dir {args.run} does not exist; train first (make train) or fix --run")
    if args.bigram_run and not Path(args.bigram_run).is_dir():
        raise UserError(f"--bigram-run {args.bigram_run} does not exist; train one with --model bigram")
    # torch is imported only now, so a usage mistake is reported without the start-up wait
    from training.checkpoint import load_run
    from training.explain.report import ExplainConfig, analyse, render_html, text_table
    from training.model import count_params

    cfg = ExplainConfig(run=args.run, prompt=args.prompt, out=args.out,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, seed=args.seed, bigram_run=args.bigram_run)
    model, config, tok = load_run(args.run)
    analysis = analyse(model, config, tok, cfg)
    if args.text:
        for line in analysis.notes:
            print(f"note: {line}", file=sys.stderr)
        print(text_table(analysis, cfg.show_k))
        return 0
    out = ensure_writable_dir(args.out)
    html = render_html(analysis, cfg, config, count_params(model))
    atomic_write(out / REPORT_NAME, html)
    print(f"wrote {out / REPORT_NAME} ({len(html) / 1e6:.1f} MB); open it in a browser")
    return 0


if __name__ == "__main__":
    run_main(main)
