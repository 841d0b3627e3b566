"""Optimizers and the learning-rate schedule.

    optimizers = build_optimizers(model, tc, "cpu", ns_dtype=torch.float32)
    set_lr(optimizers, tc, lr_factor(it, tc))  # every step, before optimizer.step()
    set_lr(optimizers, tc, lr_factor(it, tc, budget.fraction()))   # --time-budget

`--optimizer adamw`: AdamW for everything (matrices and embeddings decay, biases and
LayerNorm weights do not). `--optimizer muon`: Muon for the transformer blocks' weight
matrices, AdamW for the embeddings (tied to the output layer), biases and LayerNorms.
Muon replaces each matrix's update by the nearest semi-orthogonal matrix (5 Newton-Schulz
steps), so every direction of the matrix learns at the same rate.

torch.optim.Muon exists, but it always orthogonalizes in bf16, which a CPU without native
bf16 emulates: with oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) its step took ~1 s for
cpu-small's matrices, 12x this fp32 loop. This Muon takes the dtype: bf16 where the
hardware has it (the trainer's --precision decides), fp32 elsewhere.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from training.config import TrainConfig

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)   # Keller Jordan's quintic; converges in 5 steps


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Newton-Schulz: roughly U V^T of g = U S V^T (singular values land in ~[0.7, 1.2])."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T                                   # iterate on the smaller Gram matrix
    x = x / (x.norm() + 1e-7)                     # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):                        # x <- a x + (b G + c G^2) x, G = x x^T
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x if wide else x.T).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalized, for 2-D weights.

    The step is scaled by sqrt(max(1, rows / cols)) so tall matrices (qkv, fc) move as
    much per element as square ones; weight decay is decoupled, as in AdamW."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 ns_steps: int = 5, ns_dtype: torch.dtype = torch.float32, map: Callable = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      ns_steps=ns_steps))
        self.ns_dtype = ns_dtype
        # How the matrices' Newton-Schulz iterations are run: in turn, or shared out to the
        # trainer's worker threads (training/workers.py), largest first.
        self.map = map or (lambda fn, items: [fn(item) for item in items])

    @torch.no_grad()
    def step(self):
        work = []                                                         # (param, group, update)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                work.append((p, group, p.grad.lerp(buf, group["momentum"])))   # Nesterov
        work.sort(key=lambda w: -w[0].numel())

        def orthogonalized(w):
            with torch.no_grad():                                         # grad mode is per thread
                return orthogonalize(w[2], w[1]["ns_steps"], self.ns_dtype)

        for (p, group, _), update in zip(work, self.map(orthogonalized, work)):
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def build_optimizers(model: torch.nn.Module, tc: TrainConfig, device_type: str,
                     ns_dtype: torch.dtype = torch.float32, map: Callable = None) -> list[torch.optim.Optimizer]:
    """[AdamW] or [Muon, AdamW].

    AdamW is the fused kernel on CUDA and CPU: ~5% of a cpu-small step faster."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    matrices = {n for n, p in params.items() if p.dim() == 2 and n.startswith(("blocks.", "layers."))}
    optimizers: list[torch.optim.Optimizer] = []
    if tc.optimizer == "muon" and matrices:
        optimizers.append(Muon([p for n, p in params.items() if n in matrices], lr=tc.muon_lr,
                               momentum=tc.muon_momentum, ns_dtype=ns_dtype, map=map))
    else:
        matrices = set()
    rest = [p for n, p in params.items() if n not in matrices]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    optimizers.append(torch.optim.AdamW([g for g in groups if g["params"]], lr=tc.lr, betas=(0.9, 0.95),
                                        fused=device_type in ("cuda", "cpu")))
    return optimizers


def lr_factor(it: int, tc: TrainConfig, fraction: float | None = None) -> float:
    """Linear warmup over warmup_iters steps, then cosine decay to min_lr / lr of the peak:
    by step up to max_iters, or (--time-budget, training/budget.py) by `fraction`, the share
    of the budget's training time passed."""
    warm = (it + 1) / (tc.warmup_iters + 1) if it < tc.warmup_iters else 1.0
    if fraction is None:
        fraction = (it - tc.warmup_iters) / max(1, tc.max_iters - tc.warmup_iters)
    floor = tc.min_lr / tc.lr
    decay = floor + 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, fraction)))) * (1.0 - floor)
    return min(warm, decay)


def set_lr(optimizers: list[torch.optim.Optimizer], tc: TrainConfig, factor: float) -> float:
    """Every group's lr = its peak in tc (so a resumed run may change it) x factor; returns AdamW's."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = (tc.muon_lr if isinstance(opt, Muon) else tc.lr) * factor
    return tc.lr * factor
