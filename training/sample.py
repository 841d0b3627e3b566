"""Sample from a trained run: one prompt, or an interactive loop.

    python -m training.sample --run runs/default --prompt "ROMEO:" --max-new-tokens 300
    python -m training.sample --run runs/default          # type prompts; `quit` ends it

Uses the KV cache and slides the window past the context, so output may be longer than
the model's context. Temperature 0 is greedy decoding.
"""
from __future__ import annotations

import argparse
import sys

import torch

from core.errors import UserError, run_main
from training.checkpoint import load_run
from training.generate import generate
from training.tokenizer import decode, encode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.sample", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="training run dir (holds ckpt.pt and tokenizer.json)")
    p.add_argument("--prompt", help="text to continue; omit for an interactive prompt loop")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1 = off")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    return p


def check_args(args) -> None:
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")


def stream(model, tok, prompt: str, args, out=sys.stdout) -> str:
    """Print the continuation as it is generated; return it."""
    ids = encode(tok, prompt or "\n")  # an empty prompt starts at a line break
    new: list[int] = []
    shown = ""
    for token in generate(model, ids, args.max_new_tokens, args.temperature, args.top_k,
                          args.top_p, args.seed):
        new.append(token)
        text = decode(tok, new)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.write(text[len(shown):])
            out.flush()
            shown = text
    text = decode(tok, new)
    out.write(text[len(shown):] + "\n")
    out.flush()
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    model, _, tok = load_run(args.run, device=args.device)
    if args.prompt is not None:
        sys.stdout.write(args.prompt)
        stream(model, tok, args.prompt, args)
        return 0
    print("Type a prompt and press Enter (`quit` or Ctrl-D ends).", file=sys.stderr)
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            return 0
        if prompt.strip() == "quit":
            return 0
        stream(model, tok, prompt, args)


if __name__ == "__main__":
    run_main(main)
