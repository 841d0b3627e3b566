"""Train a GPT (or the bigram baseline) and write a run dir.

    python -m training.train --preset cpu-small --out runs/default
    python -m training.train --out runs/default --resume           # after a kill
    python -m training.train --time-budget 300 --out runs/five     # ends within 5 minutes (training/budget.py)
    python -m training.train --init-from runs/default --corpus frankenstein --out runs/ft   # fine-tune
    torchrun --standalone --nproc_per_node=2 -m training.train ...  # DDP (gloo CPU, NCCL GPU)

`main` resolves the settings and loads the corpus (training/prepare.py) and builds the run;
`train` is the loop: a `train_step` per iteration and, every `eval_interval` steps and at the
end, `evaluate_and_save`: the validation loss on the same batches each time, a row of
metrics.jsonl, `last.pt` (what --resume continues from) and, when validation improved,
`ckpt.pt` (the model later stages use). The end is --max-iters, or with --time-budget the
run's clock (training/budget.py, which also drives the lr). loss.png and summary.json are
written at the end (summary last: a run that has one finished). Only rank 0 writes. On one
CPU process each batch is split across worker threads (training/workers.py: beside other
busy processes torch's own threads collapse); DDP, CUDA, dropout and --compile runs use
torch's threads.
"""
from __future__ import annotations

import contextlib
import gc
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import UserError, run_main
from core.files import atomic_write
from core.model_config import ModelConfig
from training import init_from, run_files
from training.budget import Budget
from training.checkpoint import (CKPT_NAME, LAST_NAME, Progress, restore_training_state, serialize_checkpoint,
                                 training_state)
from training.config import TrainConfig, parse_flags
from training.data import get_batch, spread_batches
from training.device import Distributed, pick_device, use_bf16
from training.generate import generate
from training.model import build_model, count_params, flops_per_token
from training.optim import build_optimizers, lr_factor, set_lr
from training.prepare import Data, prepare_data, prepare_run
from training.tokenizer import bits_per_char, decode, encode
from training.workers import Workers, cpu_workers, uses_workers


@dataclass
class Run:
    """What the loop works with; none of it is replaced while it runs."""
    tc: TrainConfig
    mc: ModelConfig
    dd: Distributed
    data: Data
    raw: torch.nn.Module             # the model itself: what is saved and sampled
    model: torch.nn.Module           # what trains: raw, maybe compiled, maybe in DDP
    optimizers: list
    autocast: Callable               # a context-manager factory
    gen: torch.Generator             # the training batches' stream (saved for --resume)
    val_batches: list                # the same validation batches at every evaluation
    val_chars_per_token: float       # of those batches' targets, all ranks': nats/token -> bits/char
    workers: Workers | None          # CPU: the threads that split each batch (else torch's own threads)
    budget: Budget                   # the run's clock, and its --time-budget (training/budget.py)
    base: dict | None = None         # --init-from: the base run, as summary.json records it

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in self.raw.parameters() if p.requires_grad]

    @property
    def tokens_per_iter(self) -> int:
        return self.tc.batch_size * self.tc.grad_accum * self.mc.block_size * self.dd.world


@dataclass
class Meter:
    """Training steps since the last evaluation, and the time spent evaluating."""
    started: float = field(default_factory=time.perf_counter)
    iters: int = 0
    loss_sum: float = 0.0
    eval_s: float = 0.0              # evaluations and checkpoint writes in this process

    def restart(self) -> None:
        self.started, self.iters, self.loss_sum = time.perf_counter(), 0, 0.0


def build(tc: TrainConfig, mc: ModelConfig, data: Data, ckpt: dict | None, dd: Distributed,
          split_by_data: bool | None = None, base: init_from.Base | None = None,
          began_s: float = 0.0) -> tuple[Run, Progress]:
    """The Run, from the checkpoint to resume, the base to fine-tune, or fresh weights. On one
    CPU process the batch is split across worker threads (training/workers.py) unless
    split_by_data is False (bench/busy_machine.py's "before": torch's own threads). began_s:
    the process's age when the run began (training/budget.py)."""
    device = dd.device
    workers = None
    if split_by_data if split_by_data is not None else uses_workers(device, dd.world, mc.dropout, tc.compile):
        workers = Workers(cpu_workers(tc.threads))
    elif tc.threads and device.type == "cpu":
        torch.set_num_threads(tc.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = use_bf16(device, tc.precision)
    torch.manual_seed(tc.seed)
    raw = build_model(mc)
    if base is not None and ckpt is None:
        raw.load_state_dict(base.state)
    raw = raw.to(device)
    optimizers = build_optimizers(raw, tc, device.type, torch.bfloat16 if bf16 else torch.float32,
                                  map=workers.map if workers else None)
    gen = torch.Generator().manual_seed(tc.seed + dd.rank)
    progress = Progress() if ckpt is None else restore_training_state(ckpt, raw, optimizers, gen)
    model = torch.compile(raw) if tc.compile else raw
    if dd.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    val_batches = spread_batches(data.val, mc.block_size, tc.batch_size, tc.eval_iters, dd.rank, dd.world)
    targets = torch.cat([y.reshape(-1) for _, y in val_batches]).numpy()
    chars = dd.mean(float(data.char_counts[targets].sum()))          # the same on every rank
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    return Run(tc, mc, dd, data, raw, model, optimizers, autocast, gen, val_batches,
               max(chars, 1.0) / len(targets), workers, Budget(tc.time_budget, progress, began_s),
               base.record if base is not None else (ckpt or {}).get("init_from")), progress


def lr_now(run: Run, it: int) -> float:
    """The schedule's factor at step `it`: by step, or by the budget's clock (the same on every rank)."""
    if not run.budget.limited:
        return lr_factor(it, run.tc)
    return lr_factor(it, run.tc, run.dd.first(run.budget.fraction()))


def train_step(run: Run, it: int, factor: float | None = None) -> float:
    """One optimizer step (grad_accum micro-batches) at lr factor `factor` (default: by step);
    returns the step's training loss."""
    tc, device = run.tc, run.dd.device
    set_lr(run.optimizers, tc, lr_factor(it, tc) if factor is None else factor)
    loss_sum = 0.0
    for micro in range(tc.grad_accum):
        x, y = get_batch(run.data.train, run.mc.block_size, tc.batch_size, run.gen)
        if run.workers:
            loss_sum += run.workers.backward(run.model, run.params, x, y, run.autocast, 1 / tc.grad_accum)
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sync = run.dd.world == 1 or micro == tc.grad_accum - 1   # all-reduce once per step
        with (contextlib.nullcontext() if sync else run.model.no_sync()), run.autocast():
            loss = run.model(x, y)[1] / tc.grad_accum
        loss.backward()
        loss_sum += loss.item()
    if not math.isfinite(loss_sum):
        raise UserError(f"loss became {loss_sum} at iteration {it}; stopped. The last good model is "
                        f"{Path(tc.out) / CKPT_NAME}. Lower --lr or raise --warmup-iters")
    if tc.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
    for opt in run.optimizers:
        opt.step()
    run.model.zero_grad(set_to_none=True)
    return loss_sum


def val_loss(run: Run) -> float:
    """Mean loss over the fixed validation batches (shared out to the workers), averaged over
    the processes."""
    device = run.dd.device

    def loss_of(xy) -> float:
        with torch.no_grad(), run.autocast():                # both per thread
            return run.model(xy[0].to(device), xy[1].to(device))[1].item()

    run.model.eval()
    losses = run.workers.map(loss_of, run.val_batches) if run.workers else [loss_of(b) for b in run.val_batches]
    run.model.train()
    return run.dd.mean(sum(losses) / len(losses))


def evaluate_and_save(run: Run, progress: Progress, meter: Meter, log: Callable[[str], None]) -> None:
    """Validation loss, a metrics row, last.pt and (if better) ckpt.pt. Updates progress."""
    started = time.perf_counter()
    progress.elapsed_s += started - meter.started
    loss = val_loss(run)
    wall_s = run_files.process_age()                                   # when this loss was known
    improved = loss < progress.best_val_loss
    if improved:
        progress.best_val_loss, progress.stale_evals = loss, 0
    else:
        progress.stale_evals += 1
    if run.dd.main:
        window_s = started - meter.started
        row = {"iter": progress.iter,
               "train_loss": round(meter.loss_sum / meter.iters, 5) if meter.iters else None,
               "val_loss": round(loss, 5), "val_bpc": round(bits_per_char(loss, run.val_chars_per_token), 5),
               "elapsed_s": round(progress.elapsed_s, 2), "wall_s": round(wall_s, 2),
               "eval_s": round(meter.eval_s, 2),
               "tokens_per_s": round(meter.iters * run.tokens_per_iter / window_s, 1) if meter.iters else 0.0,
               "lr": run.tc.lr * lr_now(run, progress.iter), "sample": sample_text(run)}
        # metrics first: a kill before last.pt is written repeats this evaluation
        run_files.append_metrics(Path(run.tc.out), row, upto_iter=progress.iter)
        progress.budget_used_s = run.budget.clock()
        blob = serialize_checkpoint(training_state(run.raw, run.optimizers, run.mc, run.tc, progress, run.gen,
                                                   init_from=run.base))
        if improved:
            atomic_write(Path(run.tc.out) / CKPT_NAME, blob)
        atomic_write(Path(run.tc.out) / LAST_NAME, blob)
        train_loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
        log(f"iter {progress.iter}: train {train_loss}  val {loss:.4f}  bpc {row['val_bpc']:.3f}"
            f"{'  (best)' if improved else ''}" + (f"\n  sample: {row['sample'][:200]!r}" if row["sample"] else ""))
    meter.eval_s += time.perf_counter() - started
    run.budget.evaluated(time.perf_counter() - started)
    meter.restart()


def sample_text(run: Run) -> str:
    """A short sample, to watch the model learn."""
    if not run.tc.sample_tokens:
        return ""
    run.raw.eval()
    # from a newline, not EOS: the corpus has a few dozen EOS tokens but many thousand lines
    ids = list(generate(run.raw, encode(run.data.tok, "\n"), run.tc.sample_tokens, temperature=0.8,
                        seed=run.tc.seed))
    run.raw.train()
    return decode(run.data.tok, ids)


def train(run: Run, progress: Progress, resumed: bool) -> str:
    """The loop: evaluate every eval_interval steps and at the end, train in between. Returns
    what ended it: "max_iters", "budget" (--time-budget) or "patience"."""
    from tqdm import tqdm

    tc, budget, start = run.tc, run.budget, progress.iter
    bar = tqdm(total=None if budget.limited else tc.max_iters, initial=start, disable=not run.dd.main,
               dynamic_ncols=True, desc="train", file=sys.stderr, mininterval=0.5)
    meter = Meter()
    while True:
        due = progress.iter % tc.eval_interval == 0
        if budget.limited:      # room for a step, the evaluation due after it, and the final one
            stop = "budget" if run.dd.first(0.0 if budget.room(evals=2 if due else 1) else 1.0) else None
        else:
            stop = "max_iters" if progress.iter >= tc.max_iters else None
        if (due or stop) and not (resumed and progress.iter == start):   # a resumed run already evaluated this iter
            evaluate_and_save(run, progress, meter, bar.write)
        if not stop and tc.patience and progress.stale_evals >= tc.patience:
            stop = "patience"
            if run.dd.main:
                bar.write(f"early stop at iter {progress.iter}: no better val loss in "
                          f"{progress.stale_evals} evaluations")
        if stop:
            break
        step_started = time.perf_counter()
        loss = train_step(run, progress.iter, lr_now(run, progress.iter))
        budget.stepped(time.perf_counter() - step_started)
        progress.iter += 1
        meter.iters += 1
        meter.loss_sum += loss
        bar.update(1)
        rate = meter.iters * run.tokens_per_iter / max(1e-9, time.perf_counter() - meter.started)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
    bar.close()
    return stop


def summarize(run: Run, progress: Progress, stopped_by: str) -> dict:
    tokens_per_s = run.tokens_per_iter * progress.iter / max(progress.elapsed_s, 1e-9)
    return {"params": count_params(run.raw), "device": str(run.dd.device), "world_size": run.dd.world,
            "precision": "bf16 autocast" if run.autocast is not contextlib.nullcontext else "fp32",
            "best_val_loss": round(progress.best_val_loss, 5),
            "best_val_bpc": round(bits_per_char(progress.best_val_loss, run.val_chars_per_token), 5),
            "iters": progress.iter, "wall_s": round(run_files.process_age(), 2), "train_s": round(progress.elapsed_s, 2),
            "tokens_per_s": round(tokens_per_s, 1),
            "model_tflops": round(tokens_per_s * flops_per_token(run.raw) / 1e12, 4),   # / peak = MFU
            "stopped_by": stopped_by, "time_budget_s": run.tc.time_budget or None,
            "run_s": round(run.budget.clock(), 2), "init_from": run.base,
            "model_config": run.mc.to_dict(), "train_config": run.tc.to_dict()}


def main(argv: list[str] | None = None) -> int:
    # The run's clock starts with the process when it is the trainer's own (python -m, torchrun),
    # else (a test or a bench calling main) now.
    own_process = Path(sys.argv[0]).resolve() == Path(__file__).resolve()
    began_s = 0.0 if own_process else run_files.process_age()
    flags, resume = parse_flags(argv)
    dd = Distributed(pick_device(flags.get("device", "auto")))
    run = None
    try:
        tc, model_fields, ckpt, base = prepare_run(flags, resume, dd)
        data = prepare_data(tc, ckpt is not None, model_fields["block_size"], dd, base)
        try:
            mc = ModelConfig(vocab_size=data.tok.get_vocab_size(), **model_fields)
        except ValueError as e:
            raise UserError(str(e)) from None
        run, progress = build(tc, mc, data, ckpt, dd, base=base, began_s=began_s)
        if tc.time_budget and dd.main:
            run_files.preload_plotting()
        if dd.main:
            threads = f", {run.workers.n} worker threads" if run.workers else ""
            print(f"training {mc.model} {count_params(run.raw) / 1e6:.2f}M params on {dd.device} x{dd.world}{threads} "
                  f"({'bf16 autocast' if run.autocast is not contextlib.nullcontext else 'fp32'}, "
                  f"{tc.optimizer}) | vocab {mc.vocab_size} | {len(data.train):,} train / {len(data.val):,} val "
                  f"tokens | {run.tokens_per_iter:,} tokens/iter | start-up {run_files.process_age():.1f} s"
                  + (f" | budget {tc.time_budget:g} s" if tc.time_budget else "")
                  + (f" | from {tc.init_from}" if base else ""), file=sys.stderr)
        stopped_by = train(run, progress, resumed=ckpt is not None)
        if dd.main:
            out = Path(tc.out)
            params = count_params(run.raw)
            run_files.plot_losses(out, run_files.read_metrics(out), f"{mc.model} {params / 1e6:.2f}M on {tc.corpus}")
            summary = summarize(run, progress, stopped_by)     # last: a finished run has a summary
            run_files.write_summary(out, summary)
            of_budget = f" of a {tc.time_budget:g} s budget" if tc.time_budget else ""
            print(f"done: best val loss {summary['best_val_loss']:.4f} ({summary['best_val_bpc']:.3f} bits/char), "
                  f"{summary['tokens_per_s']:,.0f} tokens/s, {summary['iters']} steps, {summary['run_s']:.1f} s"
                  f"{of_budget}; model in {out / CKPT_NAME}", file=sys.stderr)
        dd.barrier()  # let rank 0 finish writing: a peer that exits early can make gloo abort
    finally:
        if run is not None and run.workers:
            run.workers.close()
        dd.close()
        # The exit then skips collecting torch's objects: ~1 s sooner (training/budget.py). Not
        # under torchrun: DDP's objects sit in reference cycles, and frozen they are left to
        # the interpreter's teardown, where gloo's work objects can abort the process
        # ("terminate called without an active exception", rank 1 after a finished run, once
        # in ~25 `test_ddp_two_cpu_processes` runs here).
        if own_process and dd.world == 1:
            gc.freeze()
    return 0


if __name__ == "__main__":
    run_main(main)
