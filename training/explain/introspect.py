"""The maths of `explain`: what the GPT computes inside, read from its own submodules.

    trace = trace_forward(model, ids)        # attention probs, residual stream, logits
    lens = logit_lens(model, trace)          # (L+1, T) top token + probability per layer
    sal = saliency(model, ids)               # (T,) gradient x input per prompt token
    steps = step_by_step(model, ids, n, temperature, top_k, seed)

training/model.py is left untouched: its attention calls F.scaled_dot_product_attention,
which returns no weights, so forward hooks capture each attention module's input (the
ln_1 output) and the probabilities are recomputed from `attn.qkv` with the causal mask.
Tests check that these weights reproduce the module's own output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from training.generate import logits_to_probs


@dataclass
class Trace:
    """One full forward over a sequence, with what happened inside."""
    ids: list[int]
    logits: torch.Tensor                      # (T, V) the model's own output
    attn: list[torch.Tensor]                  # per layer (H, T, T), rows sum to 1
    resid: list[torch.Tensor]                 # L+1 residual streams (T, C): embeddings, after each block
    attn_in: list[torch.Tensor] = field(default_factory=list)   # per layer (T, C), ln_1 output
    attn_out: list[torch.Tensor] = field(default_factory=list)  # per layer (T, C), the module's output


def has_attention(model) -> bool:
    return hasattr(model, "blocks")


def attention_probs(attn_module, x: torch.Tensor) -> torch.Tensor:
    """(T, C) attention input -> (H, T, T) causal softmax(q k^T / sqrt(d)) from attn.qkv."""
    T, C = x.shape
    H = attn_module.n_head
    q, k, _ = attn_module.qkv(x).split(C, dim=-1)
    q = q.view(T, H, -1).transpose(0, 1)                                   # (H, T, hs)
    k = k.view(T, H, -1).transpose(0, 1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))              # (H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


def attention_output(attn_module, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Rebuild the attention module's output from our weights: proj(probs @ v)."""
    T, C = x.shape
    v = attn_module.qkv(x).split(C, dim=-1)[2].view(T, probs.size(0), -1).transpose(0, 1)
    y = (probs @ v).transpose(0, 1).reshape(T, C)
    return attn_module.proj(y)


@torch.no_grad()
def trace_forward(model, ids: list[int]) -> Trace:
    """Run the model once on `ids` (one sequence, at most block_size) and record its insides."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    if not has_attention(model):
        return Trace(ids, model(x)[0][0].float(), [], [])
    attn_in, attn_out, resid = [], [], []

    # A forward hook that returns something replaces the output: these return None.
    def on_embed(module, inputs, output):
        resid.append(output[0])                                             # (T, C)

    def on_attn(module, inputs, output):
        attn_in.append(inputs[0][0])                                        # ln_1(x): (T, C)
        attn_out.append(output[0][0])

    def on_block(module, inputs, output):
        resid.append(output[0][0])

    hooks = [model.drop.register_forward_hook(on_embed)]
    for block in model.blocks:
        hooks.append(block.attn.register_forward_hook(on_attn))
        hooks.append(block.register_forward_hook(on_block))
    try:
        logits = model(x)[0][0].float()
    finally:
        for h in hooks:
            h.remove()
    attn = [attention_probs(b.attn, a) for b, a in zip(model.blocks, attn_in)]
    return Trace(ids, logits, attn, resid, attn_in, attn_out)


@dataclass
class Lens:
    top_ids: torch.Tensor   # (L+1, T) the token each layer would predict at each position
    top_probs: torch.Tensor  # (L+1, T) its probability


@torch.no_grad()
def logit_lens(model, trace: Trace) -> Lens:
    """Decode each layer's residual stream with the final LayerNorm + unembedding."""
    stacked = torch.stack(trace.resid)                                      # (L+1, T, C)
    probs = torch.softmax(model.lm_head(model.ln_f(stacked)).float(), dim=-1)
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
