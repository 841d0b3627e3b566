"""The modern block: Qwen3's layout, the one Llama, Qwen, SmolLM and nanochat share, in one file.

    model = Qwen3(ModelConfig(vocab_size=V, model="qwen3", n_kv_head=2))
    logits, loss, present = model(idx, targets)              # training, as training/model.py's GPT
    logits, _, past = model(next_id, past_kv=past)           # one decode step; past holds n_kv_head heads

Read it beside training/model.py (GPT-2, 2019): the residual stream, the pre-norm blocks
and the causal attention are the same; five pieces differ, each marked "vs GPT-2" below
with what changes and why. The state_dict names are Hugging Face Qwen3's without the
"model." prefix (embed_tokens, layers.{i}.self_attn.q_proj, ...), so export/hf.py copies
the weights unrenamed. `norm`, `mlp` and `qk_norm` in ModelConfig switch single pieces back
towards GPT-2's for the ladder (bench/); their defaults are Qwen3's block.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.model_config import ModelConfig
from training.attention import EagerAttention, KVCache, causal_mask


class RMSNorm(nn.Module):
    """vs GPT-2's LayerNorm: no mean subtracted and no bias, only a scale by the root mean square.
    As good in practice and one reduction cheaper; computed in fp32 so bf16 training keeps it exact."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.float()).to(x.dtype)


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    """RMSNorm, or (ladder rung before it) LayerNorm without a bias, under the same name."""
    return RMSNorm(dim, config.norm_eps) if config.norm == "rms" else nn.LayerNorm(dim, config.norm_eps, bias=False)


class Rotary(nn.Module):
    """vs GPT-2's learned position table: positions rotate q and k (pairs i and i + D/2 by angle
    pos * theta^(-2i/D)), so q . k depends on the distance only, with no weights to learn."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.head_dim
        inv_freq = config.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)   # (D/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)   # derived: not in state_dict

    def angles(self, position_ids: torch.Tensor) -> torch.Tensor:
        return position_ids[..., None].float() * self.inv_freq                 # (B, T, D/2)

    def cos_sin_cache(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(length, D/2) tables of every position: what ONNX Runtime's GroupQueryAttention reads."""
        a = self.angles(torch.arange(length))
        return a.cos(), a.sin()

    def rotate(self, position_ids: torch.Tensor):
        """A function rotating (B, heads, T, D) tensors to `position_ids` (B or 1, T)."""
        a = torch.cat([self.angles(position_ids)] * 2, dim=-1)[:, None]        # (B, 1, T, D)
        cos, sin = a.cos(), a.sin()

        def apply(x):                                                          # the half-split (NeoX) pairing
            x1, x2 = x.chunk(2, dim=-1)
            return x * cos + torch.cat([-x2, x1], dim=-1) * sin
        return apply


class Attention(nn.Module):
    """vs GPT-2's attention: n_kv_head < n_head key/value heads, each shared by a group of query
    heads (GQA), shrinks the KV cache a server holds per token by n_head / n_kv_head.
    QK-norm: RMSNorm over each head's q and k before rotary bounds the logits, so higher
    learning rates stay stable. No biases, and q, k, v are three matrices (Hugging Face's names)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        D = self.head_dim
        self.q_proj = nn.Linear(config.n_embd, self.n_head * D, bias=False)
        self.k_proj = nn.Linear(config.n_embd, self.n_kv_head * D, bias=False)
        self.v_proj = nn.Linear(config.n_embd, self.n_kv_head * D, bias=False)
        self.o_proj = nn.Linear(self.n_head * D, config.n_embd, bias=False)
        if config.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(D, config.norm_eps), RMSNorm(D, config.norm_eps)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, attend):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)     # (B, T, H*D), (B, T, Hkv*D) x2
        if hasattr(self, "q_norm"):                                    # each head normalised alone
            q = self.q_norm(q.unflatten(-1, (self.n_head, self.head_dim))).flatten(2)
            k = self.k_norm(k.unflatten(-1, (self.n_kv_head, self.head_dim))).flatten(2)
        y, present = attend(q, k, v)            # rotary, the cache, softmax: training/attention.py
        return self.resid_dropout(self.o_proj(y)), present             # y (B, T, H*D)


class MLP(nn.Module):
    """vs GPT-2's GELU MLP: SwiGLU, down(silu(gate(x)) * up(x)): one branch gates the other per
    unit, which learns more per weight; the hidden width is ~8/3 x so the weights stay 8 x C^2.
    Ladder rungs: "relu2" (modded-nanogpt's relu(x)^2) and "gelu", plain 4 x MLPs."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind = config.mlp
        C, F_ = config.n_embd, config.ffn_hidden
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.kind == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)                    # (B, T, F)
        elif self.kind == "relu2":
            h = F.relu(self.up_proj(x)).square()
        else:
            h = F.gelu(self.up_proj(x), approximate="tanh")
        return self.dropout(self.down_proj(h))


class DecoderLayer(nn.Module):
    """The same pre-norm residual block as GPT-2's: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = make_norm(config, config.n_embd)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, attend):
        a, present = self.self_attn(self.input_layernorm(x), attend)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


class Qwen3(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)    # no position table
        self.drop = nn.Dropout(config.dropout)
        self.rotary = Rotary(config)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        self.norm = make_norm(config, config.n_embd)
        # vs GPT-2's tied head: an untied output layer costs V x C weights (a lot at small
        # widths) and lets input and output embeddings differ; a flag, measured in the ladder.
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():   # GPT-2's scaled residual projections
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def head_weight(self) -> torch.Tensor:
        """The output layer's (V, C) weight: the embedding itself when tied."""
        return self.embed_tokens.weight if self.config.tie_embeddings else self.lm_head.weight

    def head(self, x):
        """The residual stream -> logits: the final norm, then the output layer."""
        return F.linear(self.norm(x), self.head_weight)

    def forward(self, idx, targets=None, past_kv: KVCache | None = None,
                position_ids=None, attention_mask=None, attend=None):
        """As GPT.forward; `attend` replaces the eager attention step (export/onnx_graph.py)."""
        B, T = idx.shape
        past_len = 0 if past_kv is None else past_kv[0][0].size(2)
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=idx.device)[None]
        if attend is None:
            attend = EagerAttention(past_kv, causal_mask(idx, past_len, attention_mask), self.config.head_dim,
                                    self.rotary.rotate(position_ids), self.config.dropout if self.training else 0.0)
        x = self.drop(self.embed_tokens(idx))                                  # (B, T, C)
        present = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, partial(attend, i))
            present.append(kv)
        logits = self.head(x)                                                  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss, tuple(present)
