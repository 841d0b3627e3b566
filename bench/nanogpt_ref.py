"""nanoGPT's CPU recipe, written for this repo: the yardstick of bench/time_to_loss.py.

    python bench/nanogpt_ref.py prepare --corpus shakespeare --data /tmp/ref   # untimed
    python bench/nanogpt_ref.py train --data /tmp/ref --out /tmp/ref/run        # timed
    python bench/nanogpt_ref.py score --data /tmp/ref --out /tmp/ref/run        # bits/char

Why our own code: the project's code is its own (no copied code), but the reference must be
the recipe nanoGPT's README gives for a CPU ("I only have a macbook"): its shakespeare_char
config (lr 1e-3 peaking after 100 warmup steps, cosine to 1e-4, AdamW betas (0.9, 0.99),
weight decay 0.1 on matrices and embeddings, gradient clip 1.0, no biases, exact GELU,
learned positions, tied embeddings, GPT-2's initialisation) with the README's overrides:
4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations and decay steps, no
dropout, fp32, no compile, evaluation every 250 iterations on 20 random batches of each split
(a checkpoint when validation improves), a log line every iteration. nanoGPT's loop trains
iterations 0..2000 and evaluates before iterations 0, 250, ..., 2000; so does this one.

`prepare` is nanoGPT's data/shakespeare_char/prepare.py for our corpora (not timed, as there):
a character vocabulary of the whole text plus one end-of-text symbol, split where the trainer
splits (training.data.split_documents: the last 10% of the characters), ids in .bin files.
`train` writes metrics.jsonl (iter, train_loss, val_loss, wall_s = seconds since the process
started when the evaluation finished) and ckpt.pt. `score` prints the final model's bits per
character on the whole validation text in non-overlapping windows (the target of the bench).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from core.run_dir import CKPT, METRICS  # noqa: E402  (the reference's run dir reads as ours)
from training.data import load_corpus, split_documents  # noqa: E402
from training.run_files import process_age  # noqa: E402  (light: not the trainer's imports)

RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000,
              lr_decay_iters=2000, dropout=0.0, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
              beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20,
              log_interval=1, seed=1337)
EOT = "\x00"          # one symbol per end of document (the trainer's EOS); never a corpus character


# --- the model: GPT-2's layout as nanoGPT configures it (no biases, exact GELU) ----------------
class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))                   # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Layer(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.attn = SelfAttention(d, heads)
        self.c_fc, self.c_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, n_layer: int, n_head: int, n_embd: int, block_size: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Layer(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    def logits(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))                  # (B, T, C)
        for layer in self.h:
            x = layer(x)
        return self.lm_head(self.ln_f(x))                                         # (B, T, V)

    def forward(self, idx, targets, reduction: str = "mean"):
        logits = self.logits(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


# --- prepare (untimed) --------------------------------------------------------------------------
def prepare(corpus: str, data: Path) -> None:
    train_docs, val_docs = split_documents(load_corpus(corpus))
    chars = sorted(set("".join(train_docs + val_docs)) | {EOT})
    stoi = {c: i for i, c in enumerate(chars)}
    data.mkdir(parents=True, exist_ok=True)
    for name, docs in (("train", train_docs), ("val", val_docs)):
        ids = [stoi[c] for d in docs for c in d + EOT]
        np.asarray(ids, dtype=np.uint16).tofile(data / f"{name}.bin")
    (data / "meta.json").write_text(json.dumps({"chars": chars, "corpus": corpus}))


# --- train (timed) ------------------------------------------------------------------------------
def lr_at(it: int, r: dict) -> float:
    if it < r["warmup_iters"]:
        return r["learning_rate"] * (it + 1) / (r["warmup_iters"] + 1)
    if it > r["lr_decay_iters"]:
        return r["min_lr"]
    ratio = (it - r["warmup_iters"]) / (r["lr_decay_iters"] - r["warmup_iters"])
    return r["min_lr"] + 0.5 * (1 + math.cos(math.pi * ratio)) * (r["learning_rate"] - r["min_lr"])


def batch(data: Path, split: str, r: dict):
    ids = np.memmap(data / f"{split}.bin", dtype=np.uint16, mode="r")    # re-opened per batch, as there
    starts = torch.randint(len(ids) - r["block_size"], (r["batch_size"],))
    x = torch.stack([torch.from_numpy(ids[i:i + r["block_size"]].astype(np.int64)) for i in starts])
    y = torch.stack([torch.from_numpy(ids[i + 1:i + 1 + r["block_size"]].astype(np.int64)) for i in starts])
    return x, y


def build(data: Path, r: dict) -> RefGPT:
    vocab = len(json.loads((data / "meta.json").read_text())["chars"])
    return RefGPT(vocab, r["n_layer"], r["n_head"], r["n_embd"], r["block_size"])


def train(data: Path, out: Path, r: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(r["seed"])
    model = build(data, r)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": r["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=r["learning_rate"], betas=(r["beta1"], r["beta2"]))   # not fused on CPU
    metrics = (out / METRICS).open("w")
    best, it, x, y = float("inf"), 0, *batch(data, "train", r)
    t0 = time.time()
    while True:
        lr = lr_at(it, r)
        for g in opt.param_groups:
            g["lr"] = lr
        if it % r["eval_interval"] == 0:
            losses = estimate(model, data, r)
            row = {"iter": it, **losses, "wall_s": round(process_age(), 3)}
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            print(f"step {it}: train loss {losses['train_loss']:.4f}, val loss {losses['val_loss']:.4f}")
            if losses["val_loss"] < best:
                best = losses["val_loss"]
                if it > 0:
                    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter": it,
                                "recipe": r}, out / CKPT)
        loss = model(x, y)
        x, y = batch(data, "train", r)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1 = time.time()
        if it % r["log_interval"] == 0:
            print(f"iter {it}: loss {loss.item():.4f}, time {(t1 - t0) * 1000:.2f}ms")
        t0 = t1
        it += 1
        if it > r["max_iters"]:
            break
    torch.save({"model": model.state_dict(), "iter": it, "recipe": r}, out / "final.pt")


@torch.no_grad()
def estimate(model: RefGPT, data: Path, r: dict) -> dict:
    model.eval()
    out = {f"{split}_loss": sum(model(*batch(data, split, r)).item() for _ in range(r["eval_iters"]))
           / r["eval_iters"] for split in ("train", "val")}
    model.train()
    return out


# --- score (untimed) ----------------------------------------------------------------------------
@torch.no_grad()
def text_bits_per_char(logits_of, ids: torch.Tensor, counts, block: int) -> dict:
    """A model's loss on a whole id stream in non-overlapping windows of its context: nats
    per token and bits per character (`counts[id]`: characters each id spells). Any model:
    `logits_of(x (N, T)) -> (N, T, V)`."""
    n = (len(ids) - 1) // block
    x, y = ids[:n * block].view(n, block), ids[1:n * block + 1].view(n, block)
    nats = sum(F.cross_entropy(logits_of(xb).flatten(0, 1).float(), yb.flatten(), reduction="sum").item()
               for xb, yb in zip(x.split(256), y.split(256)))
    chars = int(torch.as_tensor(counts)[y].sum())
    return {"val_loss": nats / y.numel(), "val_bpc": nats / math.log(2) / chars, "tokens": y.numel()}


def score(data: Path, out: Path, r: dict, weights: str = "final.pt") -> dict:
    """The final model on the whole validation text (the bench's target); an end of document
    spells no character."""
    model = build(data, r)
    model.load_state_dict(torch.load(out / weights, map_location="cpu")["model"])
    model.eval()
    chars = json.loads((data / "meta.json").read_text())["chars"]
    counts = [int(c != EOT) for c in chars]
    ids = torch.from_numpy(np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64))
    return text_bits_per_char(model.logits, ids, counts, r["block_size"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/nanogpt_ref.py", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("prepare", "train", "score"))
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--data", required=True, help="where prepare writes train.bin, val.bin, meta.json")
    p.add_argument("--out", help="run dir (train, score)")
    p.add_argument("--max-iters", type=int, help="a smoke test: fewer iterations (decay follows), "
                   "5 evaluations of 2 batches")
    args = p.parse_args(argv)
    r = dict(RECIPE)
    if args.max_iters:
        r.update(max_iters=args.max_iters, lr_decay_iters=args.max_iters,
                 warmup_iters=min(r["warmup_iters"], args.max_iters // 2),
                 eval_interval=max(1, args.max_iters // 4), eval_iters=2)
    if args.command == "prepare":
        prepare(args.corpus, Path(args.data))
    elif args.command == "train":
        train(Path(args.data), Path(args.out), r)
    else:
        print(json.dumps(score(Path(args.data), Path(args.out), r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
