"""Which tokenizer? Bits per character of char and byte-level BPE at equal training time.

    python bench/tokenizer_choice.py                        # char, bpe 512/2000/8000, 45 s each
    python bench/tokenizer_choice.py --seconds 20 --vocabs 512 --corpus tests/data/sonnets.txt

The tutorials pick characters or an 8k BPE without measuring. Here one cpu-small model per
tokenizer (same shape, context in tokens and recipe; only the vocabulary differs) trains
for the same time (with --threads 1, CPU seconds, which other processes' load does not
inflate; else wall seconds), in alternating chunks of steps so load hits all alike; the
learning rate decays over each one's time budget. Every tokenizer is built
from the training text only, and every model is scored on the same validation text (the
last 10% of the corpus, cut at a line break): total cross-entropy over all its tokens, in
bits, divided by its characters. That number compares across tokenizers; loss per token
does not (a BPE token spells several characters).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from core.errors import UserError, run_main  # noqa: E402
from core.model_config import ModelConfig  # noqa: E402
from training.config import resolve  # noqa: E402
from training.data import VAL_FRACTION, get_batch, load_corpus  # noqa: E402
from training.model import GPT, count_params  # noqa: E402
from training.optim import build_optimizers, set_lr  # noqa: E402
from training.tokenizer import bits_per_char, build_tokenizer, encode_documents  # noqa: E402


@dataclass
class Contender:
    name: str
    tok: object
    train: torch.Tensor
    val: torch.Tensor                # the validation text's ids (no EOS)
    model: GPT
    optimizers: list
    gen: torch.Generator
    seconds: float = 0.0
    iters: int = 0
    bpc: float = float("nan")


def split_text(docs: list[str]) -> tuple[list[str], str]:
    """(training documents, validation text): the last 10% of characters, from a line start."""
    text = "".join(docs)
    cut = text.rfind("\n", 0, int(len(text) * (1 - VAL_FRACTION))) + 1
    train, seen = [], 0
    for doc in docs:
        if seen + len(doc) > cut:
            train.append(doc[:cut - seen])
            break
        train.append(doc)
        seen += len(doc)
    return train, text[cut:]


def make(name: str, kind: str, vocab: int, train_docs, val_text, model_fields, tc, seed) -> Contender:
    tok = build_tokenizer(kind, train_docs, vocab)
    train = torch.from_numpy(encode_documents(tok, train_docs).astype("int64"))
    val = torch.from_numpy(encode_documents(tok, [val_text])[:-1].astype("int64"))
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=tok.get_vocab_size(), **model_fields))
    return Contender(name, tok, train, val, model, build_optimizers(model, tc, "cpu"),
                     torch.Generator().manual_seed(seed))


def lr_factor_by_time(c: Contender, tc, budget: float) -> float:
    """Warmup over the first steps, then cosine decay over the time budget."""
    if c.iters < tc.warmup_iters:
        return (c.iters + 1) / (tc.warmup_iters + 1)
    floor = tc.min_lr / tc.lr
    return floor + 0.5 * (1.0 + math.cos(math.pi * min(1.0, c.seconds / budget))) * (1.0 - floor)


def train_interleaved(contenders, tc, block: int, budget: float, chunk: int) -> None:
    # One thread: CPU seconds of this process, which load from other processes does not
    # inflate (on an idle machine they equal wall seconds); more threads: wall seconds.
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    rnd = 0
    while any(c.seconds < budget for c in contenders):
        for c in (contenders if rnd % 2 == 0 else contenders[::-1]):
            for _ in range(chunk):
                if c.seconds >= budget:
                    break
                x, y = get_batch(c.train, block, tc.batch_size, c.gen)
                t0 = clock()
                set_lr(c.optimizers, tc, lr_factor_by_time(c, tc, budget))
                c.model(x, y)[1].backward()
                torch.nn.utils.clip_grad_norm_(c.model.parameters(), tc.grad_clip)
                for opt in c.optimizers:
                    opt.step()
                c.model.zero_grad(set_to_none=True)
                c.seconds += clock() - t0
                c.iters += 1
        rnd += 1


@torch.no_grad()
def val_bits_per_char(c: Contender, block: int) -> float:
    """Cross-entropy of the validation tokens (all but the first), in non-overlapping windows,
    per character those tokens spell."""
    c.model.eval()
    n = (len(c.val) - 1) // block
    x, y = c.val[: n * block].view(n, block), c.val[1: n * block + 1].view(n, block)
    nats = sum(torch.nn.functional.cross_entropy(c.model(xb)[0].flatten(0, 1), yb.flatten(), reduction="sum").item()
               for xb, yb in zip(x.split(64), y.split(64)))
    chars = len(c.tok.decode(c.val[1: n * block + 1].tolist()))
    return bits_per_char(nats / (n * block), chars / (n * block))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/tokenizer_choice.py", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--seconds", type=float, default=45.0, help="training wall time per tokenizer (default 45)")
    p.add_argument("--vocabs", type=int, nargs="+", default=[512, 2000, 8000], help="BPE vocabulary sizes")
    p.add_argument("--chunk", type=int, default=10, help="steps per turn (default 10)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.chunk < 1:
        raise UserError("--seconds must be > 0 and --chunk >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    model_fields, tc = resolve({}, "cpu-small")
    block = model_fields["block_size"]
    train_docs, val_text = split_text(load_corpus(args.corpus))
    t0 = time.perf_counter()
    contenders = [make("char", "char", 0, train_docs, val_text, model_fields, tc, args.seed)]
    contenders += [make(f"bpe {v}", "bpe", v, train_docs, val_text, model_fields, tc, args.seed) for v in args.vocabs]
    print(f"cpu-small ({model_fields['n_layer']} layers, {model_fields['n_embd']} wide, context {block} tokens, "
          f"batch {tc.batch_size}, {tc.optimizer}) on {args.corpus}: {len(val_text):,} validation characters | "
          f"tokenizers built in {time.perf_counter() - t0:.0f} s | {args.seconds:g} "
          f"{'CPU' if torch.get_num_threads() == 1 else 'wall'} s of training each | "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}", flush=True)
    train_interleaved(contenders, tc, block, args.seconds, args.chunk)
    print("\n| tokenizer | vocab | chars/token | params | steps | tokens/s | chars/s | val bits/char |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in contenders:
        c.bpc = val_bits_per_char(c, block)
        cpt = len(val_text) / len(c.val)
        tok_s = c.iters * tc.batch_size * block / c.seconds
        print(f"| {c.name} | {c.tok.get_vocab_size():,} | {cpt:.2f} | {count_params(c.model) / 1e6:.2f}M | "
              f"{c.iters:,} | {tok_s:,.0f} | {tok_s * cpt:,.0f} | {c.bpc:.3f} |")
    best = min(contenders, key=lambda c: c.bpc)
    print(f"\nlowest bits/char after {args.seconds:g} s: {best.name}. bits/char = total cross-entropy of the "
          f"validation text's tokens / its characters / ln 2; chars/s = tokens/s x chars/token.")
    return 0


if __name__ == "__main__":
    run_main(main)
