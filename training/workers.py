"""CPU training split across threads by data, not by operation.

    workers = Workers(cpu_workers(tc.threads))          # one per core the process may use
    loss = workers.backward(model, params, x, y, autocast, scale=1.0)   # p.grad += summed
    results = workers.map(fn, items)                    # Muon's matrices, validation batches
    workers.close()

Why: torch's own CPU threads (OpenMP) split every operation and meet at a barrier after
each of the hundreds in a step. On an idle machine that is fine; beside another busy
process, the thread that shares a core with it is switched out for milliseconds at a time,
every barrier waits for it, and its partner spins meanwhile: 60 cpu-small steps took ~3x
as long beside one busy process and ~6x beside two (bench/busy_machine.py). Here each
worker thread runs whole micro-batches (a slice of the batch) with single-threaded torch
operations, and the workers meet twice a step (after the gradients, after Muon). Torch
releases Python's lock while it computes, so the threads run side by side, and a worker
that is switched out delays only its own slice. It is also faster on an idle machine:
fewer, larger pieces of work per thread.

The batch is cut into as many slices as there are workers and their gradients are summed in
slice order, so a run's numbers depend on the worker count but never on the scheduling.
`--threads 1` is one worker: the plain single-threaded step. Dropout draws from torch's one
global generator, in whatever order the threads reach it, so runs with dropout (and DDP,
CUDA and --compile runs) keep torch's own threads instead (`uses_workers`).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

from core.cpus import usable_cores


def cpu_workers(threads: int) -> int:
    """--threads N -> N workers; 0 -> one per core this process may use (core/cpus.py)."""
    return threads if threads > 0 else usable_cores()


def uses_workers(device: torch.device, world: int, dropout: float, compiled: bool) -> bool:
    return device.type == "cpu" and world == 1 and dropout == 0.0 and not compiled


class Workers:
    """n threads (the calling one and n - 1 more), each running torch's operations single-threaded."""

    def __init__(self, n: int):
        self.n = max(1, n)
        torch.set_num_threads(1)                      # every thread's operations: one core each
        self.pool = ThreadPoolExecutor(self.n - 1, thread_name_prefix="train-worker") if self.n > 1 else None

    def map(self, fn: Callable, items: Iterable) -> list:
        """[fn(item) for item in items]: each thread, the caller too, takes the next item as it
        frees up, so a thread that shares its core with another process simply does fewer."""
        items = list(items)
        if self.pool is None or len(items) < 2:
            return [fn(item) for item in items]
        results: list = [None] * len(items)
        taken = itertools.count()                     # next() on it is atomic under the GIL

        def drain() -> None:
            for i in taken:
                if i >= len(items):
                    return
                results[i] = fn(items[i])

        helpers = [self.pool.submit(drain) for _ in range(min(self.n, len(items)) - 1)]
        try:
            drain()
        finally:
            errors = [f.exception() for f in helpers]   # waits for every helper
        for error in errors:
            if error is not None:
                raise error
        return results

    def backward(self, model: torch.nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 autocast: Callable, scale: float = 1.0) -> float:
        """Forward and backward of the batch (x, y) in slices; adds scale * the batch's mean-loss
        gradient to each parameter's .grad. Returns scale * the batch's mean loss."""
        slices = list(zip(x.tensor_split(self.n), y.tensor_split(self.n)))
        slices = [(xs, ys) for xs, ys in slices if len(xs)]

        def grads_of(xy):
            xs, ys = xy
            weight = scale * len(xs) / len(x)          # the slices' losses average to the batch's
            with torch.enable_grad(), autocast():     # grad mode and autocast are per thread
                loss = model(xs, ys)[1] * weight
            return loss.item(), torch.autograd.grad(loss, params, allow_unused=True)

        results = self.map(grads_of, slices)
        for i, p in enumerate(params):
            total = None
            for _, grads in results:                   # slice order: the same sum every run
                g = grads[i]
                if g is not None:
                    total = g if total is None else total.add_(g)
            if total is not None:
                p.grad = total if p.grad is None else p.grad.add_(total)
        return sum(loss for loss, _ in results)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
