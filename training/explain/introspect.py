"""The maths of `explain`: what the model (GPT-2's block or Qwen3's) computes inside.

    trace = trace_forward(model, ids)        # attention probs, residual stream, logits
    lens = logit_lens(model, trace)          # (L+1, T) top token + probability per layer
    sal = saliency(model, ids)               # (T,) gradient x input per prompt token
    steps = step_by_step(model, ids, n, temperature, top_k, seed)

The models' attention calls F.scaled_dot_product_attention, which returns no weights, so
the trace runs the model's own forward with a step (training/attention.py's seam) that
computes softmax(q k^T / sqrt(d)) itself and keeps it: the maps shown are the weights the
forward used, after rotary for qwen3. With grouped KV heads, query head h reads KV head
h // (n_head / n_kv_head) (`Trace.kv_group`). Forward hooks record the residual stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.attention import EagerAttention
from training.generate import logits_to_probs


@dataclass
class Trace:
    """One full forward over a sequence, with what happened inside."""
    ids: list[int]
    logits: torch.Tensor                      # (T, V) the model's own output
    attn: list[torch.Tensor]                  # per layer (H, T, T), rows sum to 1
    resid: list[torch.Tensor]                 # L+1 residual streams (T, C): embeddings, after each block
    kv_group: int = 1                         # query heads per KV head: head h reads KV head h // kv_group


def has_attention(model) -> bool:
    return model.config.model != "bigram"


def layers(model) -> nn.ModuleList:
    """The blocks, whatever the model calls them (GPT-2: blocks, Qwen3: layers)."""
    return model.blocks if hasattr(model, "blocks") else model.layers


class RecordingAttention(EagerAttention):
    """The eager attention step, computing the softmax itself and keeping it (one sequence,
    no cache): probs[i] is layer i's (H, T, T)."""

    def __init__(self, head_dim: int, rotate=None):
        super().__init__(None, None, head_dim, rotate)
        self.probs: list[torch.Tensor] = []

    def attend_heads(self, q, k, v):
        group = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)   # (B, H, T, D)
        T = q.size(2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))              # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        probs = torch.softmax(scores.float().masked_fill(~causal, float("-inf")), dim=-1)
        self.probs.append(probs[0])
        return probs.to(v.dtype) @ v


@torch.no_grad()
def trace_forward(model, ids: list[int]) -> Trace:
    """Run the model once on `ids` (one sequence, at most block_size) and record its insides."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    if not has_attention(model):
        return Trace(ids, model(x)[0][0].float(), [], [])
    resid = []

    # A forward hook that returns something replaces the output: these return None.
    def on_embed(module, inputs, output):
        resid.append(output[0])                                             # (T, C)

    def on_block(module, inputs, output):
        resid.append(output[0][0])

    rotary = getattr(model, "rotary", None)
    step = RecordingAttention(model.config.head_dim,
                              rotary.rotate(torch.arange(len(ids), device=device)[None]) if rotary else None)
    hooks = [model.drop.register_forward_hook(on_embed)]
    hooks += [block.register_forward_hook(on_block) for block in layers(model)]
    try:
        logits = model(x, attend=step)[0][0].float()
    finally:
        for h in hooks:
            h.remove()
    return Trace(ids, logits, step.probs, resid, model.config.n_head // model.config.kv_heads)


@dataclass
class Lens:
    top_ids: torch.Tensor   # (L+1, T) the token each layer would predict at each position
    top_probs: torch.Tensor  # (L+1, T) its probability


@torch.no_grad()
def logit_lens(model, trace: Trace) -> Lens:
    """Decode each layer's residual stream with the model's own head: the final norm
    (GPT-2's LayerNorm, Qwen3's RMSNorm) and the unembedding."""
    stacked = torch.stack(trace.resid)                                      # (L+1, T, C)
    probs = torch.softmax(model.head(stacked).float(), dim=-1)
    top = probs.max(dim=-1)
    return Lens(top.indices, top.values)


def saliency(model, ids: list[int], target: int | None = None) -> tuple[torch.Tensor, int]:
    """Gradient x input on the token+position embeddings for the next-token log-probability.

    Returns ((T,) the L2 norm of grad * input per token, normalised to sum 1; the target id,
    by default the model's top prediction after the last token).
    """
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    captured = []

    def keep(module, inputs, output):
        captured.append(output)

    hook = model.drop.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)[0][0, -1].float()
            if target is None:
                target = int(logits.argmax())
            emb = captured[0]                                               # (1, T, C)
            grad, = torch.autograd.grad(F.log_softmax(logits, -1)[target], emb)
    finally:
        hook.remove()
    score = (grad * emb).detach()[0].norm(dim=-1)                          # (T,)
    return score / score.sum().clamp_min(1e-12), target


@dataclass
class Step:
    """One generated token: where it came from and what else was likely."""
    context_len: int
    chosen: int
    logits: torch.Tensor                     # (V,) raw next-token logits
    probs: torch.Tensor                      # (V,) after temperature and top-k (what was sampled from)
    attn_last: list[torch.Tensor]            # per layer (H, S): the last position's attention


def step_by_step(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, seed: int = 0, stop_ids: tuple[int, ...] = ()) -> list[Step]:
    """Generate with full forwards (no KV cache: the attention of each step is recorded).

    The caller keeps prompt + new tokens within the context, so positions never slide.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = list(prompt_ids)
    steps: list[Step] = []
    for _ in range(max_new_tokens):
        tr = trace_forward(model, ids)
        logits = tr.logits[-1].cpu()
        probs = logits_to_probs(logits[None], max(temperature, 0.0), top_k)[0]
        if temperature <= 0:
            chosen = int(logits.argmax())
        else:
            chosen = int(torch.multinomial(probs, 1, generator=gen))
        steps.append(Step(len(ids), chosen, logits, probs, [a[:, -1].cpu() for a in tr.attn]))
        ids.append(chosen)
        if chosen in stop_ids:
            break
    return steps


def top_candidates(probs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    values, indices = torch.topk(probs, min(k, probs.numel()))
    return [(int(i), float(v)) for i, v in zip(indices, values)]
