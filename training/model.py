"""The models: a decoder-only GPT (GPT-2's architecture) and the bigram baseline; build_model
also builds the modern block (training/qwen3.py).

    model = build_model(ModelConfig(vocab_size=V))
    logits, loss, present = model(idx, targets)               # training
    logits, _, past = model(prompt_ids)                        # prefill
    logits, _, past = model(next_id, past_kv=past)             # one decode step

The GPT's layout matches Hugging Face's GPT-2 (learned positions, pre-LayerNorm, tanh GELU,
tied embeddings, biases), so the benchmarks can load our weights into other engines.
`forward` takes and returns a KV cache: a tuple of (key, value) per layer, each
(B, n_head, past_len, head_dim). `attention_mask` (B, past_len + T) marks real tokens
with 1 and left padding with 0, so prompts of different lengths can share a batch.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.model_config import ModelConfig
from training.attention import EagerAttention, KVCache, causal_mask
from training.qwen3 import Qwen3


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # one matmul, not 3*H
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, attend):
        y, present = attend(self.qkv(x))    # q|k|v packed (B, T, 3C); the cache and softmax: training/attention.py
        return self.resid_dropout(self.proj(y)), present


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attend):
        a, present = self.attn(self.ln_1(x), attend)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: fewer parameters, better small models
        self.apply(self._init_weights)
        # GPT-2: scale residual projections so the residual stream's variance stays put.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def head(self, x):
        """The residual stream -> logits: the final LayerNorm and the (tied) unembedding."""
        return self.lm_head(self.ln_f(x))

    def forward(self, idx, targets=None, past_kv: KVCache | None = None,
                position_ids=None, attention_mask=None, attend=None):
        """`attend` replaces the eager attention step (export/onnx_graph.py passes ONNX Runtime's)."""
        B, T = idx.shape
        past_len = 0 if past_kv is None else past_kv[0][0].size(2)
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=idx.device)[None]
        if attend is None:
            attend = EagerAttention(past_kv, causal_mask(idx, past_len, attention_mask), self.config.head_dim,
                                    dropout=self.config.dropout if self.training else 0.0)
        x = self.drop(self.wte(idx) + self.wpe(position_ids))                # (B, T, C)
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, partial(attend, i))
            present.append(kv)
        logits = self.head(x)                                                # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss, tuple(present)


class Bigram(nn.Module):
    """The first model of the tutorials: the next token depends on this token alone.

    It ignores the KV cache and positions; it is here to show what attention buys.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.normal_(self.table.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, past_kv=None, position_ids=None, attention_mask=None):
        logits = self.table(idx)                                             # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss, ()


def build_model(config: ModelConfig) -> nn.Module:
    if config.model == "qwen3":
        return Qwen3(config)
    return GPT(config) if config.model == "gpt" else Bigram(config)


def count_params(model: nn.Module) -> int:
    """Distinct parameters (the tied embedding counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(model: nn.Module) -> int:
    """Training FLOPs per token (forward + backward), PaLM's estimate: 6 per weight of every
    matrix multiply (the output layer included, lookups not) plus attention's 12 * layers *
    context * width. Divide achieved FLOP/s by the hardware's peak for MFU."""
    c = model.config
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention = 0 if isinstance(model, Bigram) else 12 * c.n_layer * c.block_size * c.n_embd
    return 6 * matmul + attention
