"""Attention over a KV cache: the one step both blocks call, so the layers are written once.

    step = EagerAttention(past_kv, mask, head_dim, rotate=rotary)   # what GPT and Qwen3 use by default
    y, (k, v) = step(i, q, k, v)   # layer i; q (B, T, H*D), k, v (B, T, Hkv*D) -> y (B, T, H*D)

A block computes its queries, keys and values and hands them to a step; the step owns
what happens between them and the output: positions (rotary, when the model has it), the
cache, and the softmax. The eager step here is PyTorch's: it rotates, appends the new keys
and values to the cache and runs scaled_dot_product_attention. export/onnx_graph.py passes
its own step, one ONNX Runtime GroupQueryAttention node a layer, into the same forward, so
the graph is built from the model's own code (issue 28: one forward pass, not two). The
step takes and returns the heads side by side, as the projections make them, because that
is what the ONNX node reads: splitting heads is the eager step's business. GPT-2's one qkv
matmul hands its output whole (`step(i, qkv)`: q, k and v packed, as many heads each), which
the node also reads as it is.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


def build_attention_mask(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Boolean (B, 1, T, S) mask, True where a query may attend a key.

    Queries are the last `q_len` of the S = past + T positions. A query sees earlier real
    tokens and always itself: a padding query would otherwise see nothing, and the NaN
    from an all-masked softmax row would leak into every later layer's keys and values.
    """
    total = attention_mask.size(1)
    k_pos = torch.arange(total, device=attention_mask.device)
    q_pos = k_pos[total - q_len:]
    causal = k_pos[None, :] <= q_pos[:, None]                         # (T, S)
    allowed = causal[None] & attention_mask[:, None, :].bool()         # (B, T, S)
    allowed = allowed | (k_pos[None, :] == q_pos[:, None])[None]
    return allowed[:, None]                                            # (B, 1, T, S)


def causal_mask(idx: torch.Tensor, past_len: int, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask a forward of `idx` (B, T) after `past_len` cached tokens needs, or None where
    SDPA's own causal flag (nothing cached) or no mask (one new token) is exact."""
    B, T = idx.shape
    if attention_mask is not None:
        return build_attention_mask(attention_mask, T)
    if past_len > 0 and T > 1:
        return build_attention_mask(torch.ones(B, past_len + T, dtype=torch.long, device=idx.device), T)
    return None


class EagerAttention:
    """The PyTorch step: rotate q and k (if `rotate`), append k and v to layer i's cache,
    softmax(q k^T / sqrt(D)) v. Grouped KV heads: query head h reads KV head h // (H / Hkv)."""

    def __init__(self, past_kv: KVCache | None, mask: torch.Tensor | None, head_dim: int,
                 rotate: Callable[[torch.Tensor], torch.Tensor] | None = None, dropout: float = 0.0):
        self.past_kv, self.mask, self.head_dim = past_kv, mask, head_dim
        self.rotate, self.dropout = rotate, dropout

    def __call__(self, i: int, q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None):
        if k is None:                                                          # packed q | k | v
            q, k, v = q.chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (-1, self.head_dim)).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, D)
        if self.rotate is not None:
            q, k = self.rotate(q), self.rotate(k)
        if self.past_kv is not None:
            k = torch.cat([self.past_kv[i][0], k], dim=2)                     # (B, Hkv, P+T, D)
            v = torch.cat([self.past_kv[i][1], v], dim=2)
        y = self.attend_heads(q, k, v)
        return y.transpose(1, 2).flatten(2), (k, v)                           # (B, T, H*D)

    def attend_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(D)) v: q (B, H, T, D), k and v (B, Hkv, S, D) -> (B, H, T, D).
        SDPA's fused kernels; training/explain overrides this to keep the weights."""
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=self.mask, dropout_p=self.dropout,
            is_causal=self.mask is None and self.past_kv is None and q.size(2) > 1,
            enable_gqa=k.size(1) != q.size(1))
