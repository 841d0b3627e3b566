"""The model's shape: one stdlib dataclass shared by every stage.

    mc = ModelConfig(vocab_size=2000, block_size=64, n_layer=4, n_head=4, n_embd=128)
    mc = ModelConfig(vocab_size=2000, model="qwen3", n_kv_head=2, tie_embeddings=False)
    mc.head_dim, mc.kv_heads, mc.ffn_hidden, mc.to_dict(), ModelConfig.from_dict(d)

Training writes it into `ckpt.pt`, export embeds it in the artifact's `model_config.json`
(core/artifact.py), and the server reads it back from there. It must never import torch.

`model` picks the block: "gpt" (GPT-2's, training/model.py), "qwen3" (the modern one,
training/qwen3.py) or "bigram". The fields after `model` shape only qwen3; `norm`, `mlp`
and `qk_norm` exist so the ladder (bench/) can build each rung between GPT-2's block and
qwen3's: their defaults are qwen3's own layout, the only one the transformers and GGUF
exports take (`is_full_qwen3`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MODEL_KINDS = ("gpt", "bigram", "qwen3")
NORMS = ("rms", "layer")
MLPS = ("swiglu", "relu2", "gelu")
FFN_MULTIPLE = 32             # the gated MLP's hidden width is rounded up to this


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    block_size: int = 64          # context length in tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True             # GPT-2 keeps biases; it lets HF/CTranslate2 load our weights (gpt only)
    model: str = "gpt"            # "gpt", "qwen3" or "bigram"
    # --- qwen3 only -----------------------------------------------------------------------
    n_kv_head: int = 0            # key/value heads (grouped-query attention); 0 = n_head
    tie_embeddings: bool = True   # the output layer reuses the token embedding
    rope_theta: float = 10000.0   # rotary base: inv_freq = theta^(-2i/head_dim)
    norm_eps: float = 1e-6
    norm: str = "rms"             # ladder knob: "layer" = GPT-2's LayerNorm (no bias)
    mlp: str = "swiglu"           # ladder knob: "relu2" / "gelu" = a plain 4x MLP
    qk_norm: bool = True          # ladder knob: RMSNorm over each head's q and k

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.model!r}; choose one of {', '.join(MODEL_KINDS)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try --n-embd {self.n_head * max(1, round(self.n_embd / self.n_head))}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_kv_head < 0 or self.n_head % self.kv_heads:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}): "
                             f"each key/value head serves the same number of query heads")
        if self.norm not in NORMS or self.mlp not in MLPS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)} and mlp one of {', '.join(MLPS)}; "
                             f"got {self.norm!r}, {self.mlp!r}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(f"rope_theta and norm_eps must be positive, got {self.rope_theta}, {self.norm_eps}")
        if self.model != "qwen3" and (self.kv_heads != self.n_head or not self.tie_embeddings):
            raise ValueError(f"grouped KV heads (--n-kv-head) and an untied head are qwen3's; "
                             f"the {self.model} model has neither: add --model qwen3")
        if self.model == "qwen3" and self.head_dim % 2:
            raise ValueError(f"rotary embeddings rotate pairs: head size {self.head_dim} "
                             f"(n_embd / n_head) must be even")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or n_head when it is 0 (and always for gpt)."""
        return self.n_kv_head or self.n_head

    @property
    def ffn_hidden(self) -> int:
        """The MLP's hidden width: 4 x n_embd, or ~8/3 x for the gated MLP (its three matrices
        then hold as many weights as GPT-2's two), rounded up to a multiple of 32."""
        if self.mlp != "swiglu":
            return 4 * self.n_embd
        return -(-(8 * self.n_embd // 3) // FFN_MULTIPLE) * FFN_MULTIPLE

    @property
    def is_full_qwen3(self) -> bool:
        """Qwen3's own layout (not a ladder rung): what Qwen3ForCausalLM and llama.cpp load."""
        return self.model == "qwen3" and (self.norm, self.mlp, self.qk_norm) == ("rms", "swiglu", True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
