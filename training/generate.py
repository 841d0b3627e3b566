"""Incremental generation with the KV cache: prefill, decode one token, sample.

    for token_id in generate(model, prompt_ids, max_new_tokens=200, temperature=0.8):
        ...

The prompt is prefilled once; each step then feeds one token and reuses the cache. When
the context fills up, the newest `window_keep(block_size)` tokens are re-prefilled and
generation continues, so output can be longer than the context: the loop and the rule are
core/window.py's, shared with export.verify's check of the serving runtime.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from core.window import generate_ids


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits -> (B, V) probabilities after temperature, top-k and top-p (nucleus)."""
    logits = logits.float() / max(temperature, 1e-8)
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # drop a token when the tokens ranked above it already reach top_p (the first stays)
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids; temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prefill(model, ids: Sequence[int], device="cpu"):
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)
    logits, _, past = model(x)
    return logits[:, -1], past


def decode_one_token(model, token_id: int, past, device="cpu"):
    x = torch.tensor([[token_id]], dtype=torch.long, device=device)
    logits, _, past = model(x, past_kv=past)
    return logits[:, -1], past


@torch.no_grad()
def generate(model, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             stop_ids: Sequence[int] = ()) -> Iterator[int]:
    """Yield up to `max_new_tokens` ids; stops after yielding a token in `stop_ids`."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    past = None

    def prefill_window(tokens: list[int]) -> torch.Tensor:
        nonlocal past
        logits, past = prefill(model, tokens, device)
        return logits

    def decode_next(token: int, position: int) -> torch.Tensor:
        nonlocal past
        logits, past = decode_one_token(model, token, past, device)
        return logits

    def choose(logits: torch.Tensor) -> int:
        return int(sample(logits, temperature, top_k, top_p, gen)[0])

    for token in generate_ids(prefill_window, decode_next, choose, list(prompt_ids) or [0],
                              model.config.block_size, max_new_tokens):
        yield token
        if token in stop_ids:
            return
