"""Train a GPT (or the bigram baseline) and write a run dir.

    python -m training.train --preset cpu-small --out runs/default
    python -m training.train --out runs/default --resume           # after a kill
    torchrun --standalone --nproc_per_node=2 -m training.train ...  # DDP (gloo CPU, NCCL GPU)

Each evaluation measures train/val loss and bits per character, appends metrics.jsonl,
redraws loss.png, prints a short sample, saves `last.pt` (what --resume continues from)
and, when validation improved, `ckpt.pt` (the model later stages use). Only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from training import run_files
from training.checkpoint import (CKPT_NAME, LAST_NAME, TOKENIZER_NAME, load_checkpoint,
                                 load_tokenizer, model_config_of, save_checkpoint)
from training.cli import UserError, atomic_write, ensure_writable_dir, run_main
from training.config import MODEL_FIELDS, PRESETS, TrainConfig, build_parser, explicit_flags, resolve
from training.data import get_batch, load_corpus, split_train_val
from training.generate import generate
from training.model import build_model, configure_optimizer, count_params
from training.model_config import ModelConfig
from training.tokenizer import build_tokenizer, decode, encode, encode_documents


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def has_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # oneDNN runs bf16 matmuls natively on AVX512-BF16 / AMX CPUs; elsewhere it emulates (slow)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(device: torch.device, precision: str):
    """A context-manager factory: bf16 autocast (weights and optimizer stay fp32) or nothing."""
    if precision == "bf16" and not has_bf16(device):
        raise UserError(f"--precision bf16 asked for, but this {device.type} has no native bf16; use --precision fp32")
    if precision == "fp32" or (precision == "auto" and not has_bf16(device)):
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def lr_at(it: int, tc: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr at max_iters."""
    if it < tc.warmup_iters:
        return tc.lr * (it + 1) / (tc.warmup_iters + 1)
    progress = min(1.0, (it - tc.warmup_iters) / max(1, tc.max_iters - tc.warmup_iters))
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.lr - tc.min_lr)


class Distributed:
    """Rank/world from torchrun's environment; a single process otherwise."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        if self.world > 1:
            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def close(self):
        if self.world > 1:
            dist.destroy_process_group()


def prepare_run(args, flags: dict, dd: Distributed):
    """(TrainConfig, model fields, resume checkpoint or None) for a new or resumed run."""
    out = Path(flags.get("out", TrainConfig.out))
    if args.resume:
        path = out / LAST_NAME if (out / LAST_NAME).is_file() else out / CKPT_NAME
        if not path.is_file():
            raise UserError(f"nothing to resume in {out} (no {LAST_NAME} or {CKPT_NAME}); drop --resume to start a new run")
        ckpt = load_checkpoint(path)
        saved = model_config_of(ckpt, path)
        changed = [f"{k}={getattr(saved, k)} in the checkpoint but {flags[k]} asked"
                   for k in MODEL_FIELDS if k in flags and flags[k] != getattr(saved, k)]
        if changed:
            raise UserError(f"cannot resume {out} with a different model shape ({'; '.join(changed)}); "
                            f"drop those flags, or start a new run with another --out")
        settings = {**ckpt["train_config"], **{k: v for k, v in flags.items() if k not in MODEL_FIELDS}}
        return TrainConfig(**settings), {k: getattr(saved, k) for k in MODEL_FIELDS}, ckpt
    preset = flags.pop("preset", None) or ("gpu" if dd.device.type == "cuda" else "cpu-small")
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    model_fields, tc = resolve(flags, preset)
    if dd.main:
        if (out / CKPT_NAME).exists() or (out / LAST_NAME).exists():
            raise UserError(f"{out} already holds a run; add --resume to continue it, or pick another --out")
        ensure_writable_dir(out)
    return tc, model_fields, None


def prepare_data(tc: TrainConfig, resuming: bool, block_size: int, dd: Distributed):
    docs = load_corpus(tc.corpus)
    out = Path(tc.out)
    if not resuming and dd.main:
        try:
            tok = build_tokenizer(tc.tokenizer, docs, tc.vocab_size)
        except ValueError as e:
            raise UserError(str(e)) from None
        atomic_write(out / TOKENIZER_NAME, tok.to_str())
    dd.barrier()  # the other ranks read the tokenizer rank 0 just wrote
    tok = load_tokenizer(out)
    ids = encode_documents(tok, docs)
    train_data, val_data = split_train_val(ids, block_size)
    chars_per_token = len(decode(tok, val_data.tolist())) / len(val_data)
    return tok, train_data, val_data, chars_per_token


@torch.no_grad()
def estimate_loss(model, data, tc, block_size, gen, autocast) -> float:
    model.eval()
    losses = []
    for _ in range(tc.eval_iters):
        x, y = get_batch(data, block_size, tc.batch_size, gen)
        with autocast():
            losses.append(model(x.to(model_device(model)), y.to(model_device(model)))[1].item())
    model.train()
    return sum(losses) / len(losses)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(tc: TrainConfig, mc: ModelConfig, tok, train_data, val_data, chars_per_token: float,
          ckpt: dict | None, dd: Distributed) -> dict:
    device, out = dd.device, Path(tc.out)
    if tc.threads and device.type == "cpu":
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed + dd.rank)
    raw = build_model(mc).to(device)
    optimizer = configure_optimizer(raw, tc.lr, tc.weight_decay, device.type)
    start_iter, best_val, stale, elapsed = 0, float("inf"), 0, 0.0
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_iter, best_val = ckpt["iter"], ckpt["best_val_loss"]
        stale, elapsed = ckpt.get("stale_evals", 0), ckpt.get("elapsed_s", 0.0)
        restore_rng(ckpt["rng"], gen)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = autocast_for(device, tc.precision)
    model = torch.compile(raw) if tc.compile else raw
    if dd.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    params = count_params(raw)
    tokens_per_iter = tc.batch_size * tc.grad_accum * mc.block_size * dd.world
    precision = "fp32" if autocast is contextlib.nullcontext else "bf16 autocast"
    if dd.main:
        print(f"training {mc.model} {params / 1e6:.2f}M params on {device} x{dd.world} ({precision}) | "
              f"vocab {mc.vocab_size} | {len(train_data):,} train / {len(val_data):,} val tokens | "
              f"{tokens_per_iter:,} tokens/iter", file=sys.stderr)
    bar = tqdm(total=tc.max_iters, initial=start_iter, disable=not dd.main, dynamic_ncols=True,
               desc="train", file=sys.stderr, mininterval=0.5)
    summary = {"params": params, "device": str(device), "world_size": dd.world, "precision": precision}
    tokens_per_s, window_t, window_iters = 0.0, time.perf_counter(), 0
    it = start_iter
    while True:
        if it % tc.eval_interval == 0 or it == tc.max_iters:
            if it != start_iter or ckpt is None:     # a resumed run already evaluated this iter
                window_s = time.perf_counter() - window_t
                elapsed += window_s
                if window_iters:
                    tokens_per_s = window_iters * tokens_per_iter / window_s
                train_loss = dd.mean(estimate_loss(model, train_data, tc, mc.block_size, gen, autocast))
                val_loss = dd.mean(estimate_loss(model, val_data, tc, mc.block_size, gen, autocast))
                improved = val_loss < best_val
                best_val, stale = (val_loss, 0) if improved else (best_val, stale + 1)
                if dd.main:
                    row = {"iter": it, "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5),
                           "val_bpc": round(val_loss / math.log(2) / chars_per_token, 5),
                           "elapsed_s": round(elapsed, 2), "tokens_per_s": round(tokens_per_s, 1),
                           "lr": lr_at(it, tc), "sample": sample_text(raw, tok, tc)}
                    state = {"model_config": mc.to_dict(), "train_config": tc.to_dict(),
                             "model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                             "iter": it, "best_val_loss": best_val, "stale_evals": stale,
                             "elapsed_s": elapsed, "rng": rng_state(gen)}
                    # metrics first: a kill before last.pt is written repeats this evaluation
                    rows = run_files.append_metrics(out, row, upto_iter=it)
                    run_files.plot_losses(out, rows, f"{mc.model} {params / 1e6:.2f}M on {tc.corpus}")
                    if improved:
                        save_checkpoint(out / CKPT_NAME, state)
                    save_checkpoint(out / LAST_NAME, state)
                    bar.write(f"iter {it}: train {train_loss:.4f}  val {val_loss:.4f}  "
                              f"bpc {row['val_bpc']:.3f}{'  (best)' if improved else ''}\n"
                              f"  sample: {row['sample'][:200]!r}")
                window_t, window_iters = time.perf_counter(), 0
            if it >= tc.max_iters:
                break
            if tc.patience and stale >= tc.patience:
                if dd.main:
                    bar.write(f"early stop at iter {it}: no better val loss in {stale} evaluations")
                break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, tc)
        loss_sum = 0.0
        for micro in range(tc.grad_accum):
            x, y = get_batch(train_data, mc.block_size, tc.batch_size, gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = dd.world == 1 or micro == tc.grad_accum - 1   # all-reduce once per step
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast():
                loss = model(x, y)[1] / tc.grad_accum
            loss.backward()
            loss_sum += loss.item()
        if not math.isfinite(loss_sum):
            raise UserError(f"loss became {loss_sum} at iteration {it}; stopped. The last good model is "
                            f"{out / CKPT_NAME} (val {best_val:.4f}). Lower --lr or raise --warmup-iters")
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        window_iters += 1
        bar.update(1)
        rate = window_iters * tokens_per_iter / max(1e-9, time.perf_counter() - window_t)
        bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
    bar.close()
    summary.update(best_val_loss=round(best_val, 5), best_val_bpc=round(best_val / math.log(2) / chars_per_token, 5),
                   iters=it, wall_s=round(elapsed, 2), tokens_per_s=round(tokens_per_iter * it / max(elapsed, 1e-9), 1),
                   model_config=mc.to_dict(), train_config=tc.to_dict())
    return summary


def sample_text(model, tok, tc: TrainConfig) -> str:
    """A short sample, to watch the model learn."""
    if not tc.sample_tokens:
        return ""
    model.eval()
    # from a newline, not EOS: the corpus has a few dozen EOS tokens but many thousand lines
    ids = list(generate(model, encode(tok, "\n"), tc.sample_tokens, temperature=0.8, seed=tc.seed))
    model.train()
    return decode(tok, ids)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = explicit_flags(args)
    dd = Distributed(pick_device(flags.get("device", "auto")))
    try:
        tc, model_fields, ckpt = prepare_run(args, flags, dd)
        tok, train_data, val_data, chars_per_token = prepare_data(
            tc, ckpt is not None, model_fields["block_size"], dd)
        try:
            mc = ModelConfig(vocab_size=tok.get_vocab_size(), **model_fields)
        except ValueError as e:
            raise UserError(str(e)) from None
        summary = train(tc, mc, tok, train_data, val_data, chars_per_token, ckpt, dd)
        if dd.main:
            run_files.write_summary(Path(tc.out), summary)
            print(f"done: best val loss {summary['best_val_loss']:.4f} "
                  f"({summary['best_val_bpc']:.3f} bits/char), {summary['tokens_per_s']:,.0f} tokens/s; "
                  f"model in {Path(tc.out) / CKPT_NAME}", file=sys.stderr)
        dd.barrier()  # let rank 0 finish writing: a peer that exits early can make gloo abort
    finally:
        dd.close()
    return 0


if __name__ == "__main__":
    run_main(main)
