"""Training speed: our trainer's model and step vs a plain eager tutorial-style GPT.

    python bench/train_speed.py                      # cpu-small shape, shakespeare, 40 s each
    python bench/train_speed.py --seconds 20 --corpus tests/data/sonnets.txt --no-compile
    python bench/train_speed.py --time-to-loss        # against nanoGPT's CPU recipe: bench/time_to_loss.py

Same data (the trainer's char tokenizer and batches from one seed), same shape, same
batch and context. The contenders run in alternating chunks of steps, each timing only its
own steps, until each has trained for `--seconds`: load from other processes then hits
them alike. At the end every model is scored on the same fixed validation batches, so the
val losses compare at equal wall time. `ours+compile` is the trainer's `--compile`; its
compile time (the first forward and backward) is shown apart and not charged to it.
`ours+bf16` is the trainer's step under CPU bf16 autocast (only where oneDNN has bf16),
`ours+compile+bf16` both. Every contender runs on torch's own threads (`--threads`), as the
trainer does for DDP, CUDA, dropout and --compile runs; its default on one CPU process
splits each batch across threads instead, which bench/busy_machine.py compares with this.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from core.errors import UserError, run_main  # noqa: E402
from core.model_config import ModelConfig  # noqa: E402
from training.config import resolve  # noqa: E402
from training.data import get_batch, load_corpus, split_documents, to_tensors  # noqa: E402
from training.model import GPT, count_params  # noqa: E402
from training.optim import build_optimizers, lr_factor, set_lr  # noqa: E402
from training.tokenizer import build_tokenizer, encode_documents  # noqa: E402


# --- (b) the reference: "Let's build GPT" as the tutorials write it ---------------------
class Head(nn.Module):
    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        k, q = self.key(x), self.query(x)                                   # (B, T, hs)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5                 # (B, T, T)
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = self.dropout(F.softmax(wei, dim=-1))
        return wei @ self.value(x)                                          # (B, T, hs)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float):
        super().__init__()
        self.heads = nn.ModuleList(Head(n_embd, n_embd // n_head, block_size, dropout) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.proj(torch.cat([h(x) for h in self.heads], dim=-1)))


class FeedForward(nn.Module):
    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.ReLU(),
                                 nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class RefBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float):
        super().__init__()
        self.sa = MultiHeadAttention(n_embd, n_head, block_size, dropout)
        self.ffwd = FeedForward(n_embd, dropout)
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class RefGPT(nn.Module):
    def __init__(self, mc: ModelConfig):
        super().__init__()
        self.token_embedding_table = nn.Embedding(mc.vocab_size, mc.n_embd)
        self.position_embedding_table = nn.Embedding(mc.block_size, mc.n_embd)
        self.blocks = nn.Sequential(*[RefBlock(mc.n_embd, mc.n_head, mc.block_size, mc.dropout)
                                      for _ in range(mc.n_layer)])
        self.ln_f = nn.LayerNorm(mc.n_embd)
        self.lm_head = nn.Linear(mc.n_embd, mc.vocab_size)                 # untied
        self.apply(GPT._init_weights)  # the same N(0, 0.02) start as ours

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.token_embedding_table(idx) + self.position_embedding_table(torch.arange(T))
        logits = self.lm_head(self.ln_f(self.blocks(x)))                   # (B, T, V)
        loss = None
        if targets is not None:
            B, T, C = logits.shape
            loss = F.cross_entropy(logits.view(B * T, C), targets.reshape(B * T))
        return logits, loss


# --- the contenders ---------------------------------------------------------------------
@dataclass
class Contender:
    name: str
    model: nn.Module                     # what trains (maybe compiled)
    raw: nn.Module                       # the same weights, eager, for evaluation
    step: callable                       # step(it, x, y) -> None
    gen: torch.Generator                 # its own copy of the batch stream
    seconds: float = 0.0
    iters: int = 0
    setup_s: float = 0.0                 # compile time, not charged to `seconds`
    val_loss: float = float("nan")
    notes: list[str] = field(default_factory=list)


def ours_step(model, optimizers, tc, autocast):
    """The trainer's inner loop for grad_accum=1 on one process on torch's threads (training/train.py)."""
    def step(it, x, y):
        set_lr(optimizers, tc, lr_factor(it, tc))
        with autocast():
            loss = model(x, y)[1]
        loss.backward()
        loss_sum = loss.item()
        if not math.isfinite(loss_sum):
            raise RuntimeError(f"loss became {loss_sum}")
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    return step


def make_ours(name, mc, tc, seed, compile_: bool, bf16: bool, sample) -> Contender:
    torch.manual_seed(seed)
    raw = GPT(mc)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    optimizers = build_optimizers(raw, tc, "cpu", torch.bfloat16 if bf16 else torch.float32)
    model, setup_s = raw, 0.0
    if compile_:
        model = torch.compile(raw)
        t0 = time.perf_counter()
        x, y = sample
        with autocast():
            model(x, y)[1].backward()         # compiles forward and backward; no weight update
        raw.zero_grad(set_to_none=True)
        setup_s = time.perf_counter() - t0
    return Contender(name, model, raw, ours_step(model, optimizers, tc, autocast),
                     torch.Generator().manual_seed(seed), setup_s=setup_s)


def make_ref(mc, lr, seed) -> Contender:
    torch.manual_seed(seed)
    model = RefGPT(mc)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)               # constant lr

    def step(it, x, y):
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return Contender("reference", model, model, step, torch.Generator().manual_seed(seed))


@torch.no_grad()
def evaluate(model: nn.Module, batches) -> float:
    model.eval()
    loss = sum(model(x, y)[1].item() for x, y in batches) / len(batches)
    model.train()
    return loss


def run_interleaved(contenders, train_data, mc, tc, budget_s: float, chunk: int) -> None:
    """Alternate chunks of `chunk` steps; each contender stops once its own clock passes the budget."""
    rnd = 0
    while any(c.seconds < budget_s for c in contenders):
        order = contenders if rnd % 2 == 0 else contenders[::-1]   # nobody always goes first
        for c in order:
            for _ in range(chunk):
                if c.seconds >= budget_s:
                    break
                x, y = get_batch(train_data, mc.block_size, tc.batch_size, c.gen)
                t0 = time.perf_counter()
                c.step(c.iters, x, y)
                c.seconds += time.perf_counter() - t0
                c.iters += 1
        rnd += 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/train_speed.py", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", nargs="+", default=["shakespeare"],
                   help="shakespeare (default), frankenstein, or a .txt path; --time-to-loss takes several")
    p.add_argument("--seconds", type=float, default=40.0, help="training wall time per contender (default 40)")
    p.add_argument("--chunk", type=int, default=10, help="steps per turn when interleaving (default 10)")
    p.add_argument("--eval-batches", type=int, default=40, help="fixed validation batches (default 40)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--ref-lr", type=float, default=1e-3, help="reference's constant AdamW lr (default 1e-3)")
    p.add_argument("--no-compile", action="store_true", help="skip the ours+compile row")
    p.add_argument("--no-bf16", action="store_true", help="skip the ours+bf16 row (CPU bf16 autocast)")
    t = p.add_argument_group("--time-to-loss: `python -m training.train` against nanoGPT's CPU recipe "
                             "(bench/nanogpt_ref.py), from the command's start (bench/time_to_loss.py)")
    t.add_argument("--time-to-loss", action="store_true", help="run this comparison instead")
    t.add_argument("--precision", choices=["fp32", "bf16", "auto"], help="ours (default: the preset's)")
    t.add_argument("--repeats", type=int, default=1, help="runs of each, alternating order (default 1)")
    t.add_argument("--fp32-row", action=argparse.BooleanOptionalAction, default=True,
                   help="also ours with --precision fp32 (default on; the default is bf16 where the CPU has it)")
    t.add_argument("--train-args", default="", help="more flags for ours, one string (a candidate recipe: "
                   "'--model qwen3'); its rows say so")
    t.add_argument("--out", help="keep the run dirs here (default: a temp dir, removed)")
    t.add_argument("--fraction", type=float, default=1.0, help="run this fraction of each recipe's steps "
                   "(a smoke test: the target then means little)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.time_to_loss:
        from bench.time_to_loss import main as time_to_loss
        return time_to_loss(args)
    if args.seconds <= 0 or args.chunk < 1 or args.eval_batches < 1 or args.threads < 0:
        raise UserError("--seconds must be > 0, --chunk and --eval-batches >= 1, --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    model_fields, tc = resolve({}, "cpu-small")
    args.corpus = args.corpus[0]
    train_docs, val_docs = split_documents(load_corpus(args.corpus))
    tok = build_tokenizer("char", train_docs)
    train_data, val_data = to_tensors(encode_documents(tok, train_docs), encode_documents(tok, val_docs),
                                      model_fields["block_size"])
    mc = ModelConfig(vocab_size=tok.get_vocab_size(), **model_fields)
    val_gen = torch.Generator().manual_seed(args.seed + 1)
    val_batches = [get_batch(val_data, mc.block_size, tc.batch_size, val_gen) for _ in range(args.eval_batches)]

    sample = get_batch(train_data, mc.block_size, tc.batch_size, torch.Generator().manual_seed(0))
    contenders = [make_ours("ours", mc, tc, args.seed, False, False, sample), make_ref(mc, args.ref_lr, args.seed)]
    bf16 = not args.no_bf16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()   # AVX512-BF16 / AMX
    if bf16:
        contenders.append(make_ours("ours+bf16", mc, tc, args.seed, False, True, sample))
    if not args.no_compile:
        try:
            contenders.append(make_ours("ours+compile", mc, tc, args.seed, True, False, sample))
            if bf16:
                contenders.append(make_ours("ours+compile+bf16", mc, tc, args.seed, True, True, sample))
        except Exception as e:  # noqa: BLE001 — a missing compiler must not cost the other rows
            print(f"compiled rows skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
    tokens_per_iter = tc.batch_size * mc.block_size
    load0 = os.getloadavg()[0]
    print(f"cpu-small: {mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide, context {mc.block_size}, "
          f"batch {tc.batch_size}, vocab {mc.vocab_size} | corpus {args.corpus}: {len(train_data):,} train tokens | "
          f"{args.seconds:g} s each, chunks of {args.chunk} steps | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load0:.1f}", flush=True)
    t0 = time.perf_counter()
    run_interleaved(contenders, train_data, mc, tc, args.seconds, args.chunk)
    for c in contenders:
        c.val_loss = evaluate(c.raw, val_batches)
    ref = next(c for c in contenders if c.name == "reference")
    ref_rate = ref.iters * tokens_per_iter / ref.seconds
    print(f"\ntrained {time.perf_counter() - t0:.0f} s in all; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"| {'contender':<17} | {'params':>7} | {'steps':>6} | {'train s':>7} | {'tokens/s':>9} | "
          f"{'vs ref':>6} | {'val loss':>8} | {'compile s':>9} |")
    print("|" + "-" * 19 + "|" + "|".join("-" * w + ":" for w in (8, 7, 8, 10, 7, 9, 10)) + "|")
    for c in contenders:
        rate = c.iters * tokens_per_iter / c.seconds
        print(f"| {c.name:<17} | {count_params(c.raw) / 1e6:6.3f}M | {c.iters:>6} | {c.seconds:>7.1f} | "
              f"{rate:>9,.0f} | {rate / ref_rate:>5.2f}x | {c.val_loss:>8.4f} | "
              f"{(f'{c.setup_s:.1f}' if c.setup_s else '-'):>9} |")
    print(f"\nval loss: mean over the same {len(val_batches)} validation batches, after equal training wall time; "
          f"ours uses the trainer's schedule (warmup {tc.warmup_iters}, cosine to iter {tc.max_iters}), "
          f"the reference a constant lr {args.ref_lr:g}.")
    return 0


if __name__ == "__main__":
    run_main(main)
