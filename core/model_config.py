"""The model's shape: one stdlib dataclass shared by every stage.

    mc = ModelConfig(vocab_size=2000, block_size=64, n_layer=4, n_head=4, n_embd=128)
    mc.head_dim, mc.to_dict(), ModelConfig.from_dict(d)

Training writes it into `ckpt.pt`, export embeds it in the artifact's `model_config.json`
(core/artifact.py), and the server reads it back from there. It must never import torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MODEL_KINDS = ("gpt", "bigram")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    block_size: int = 64          # context length in tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True             # GPT-2 keeps biases; it lets HF/CTranslate2 load our weights
    model: str = "gpt"            # "gpt" or "bigram"

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

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

