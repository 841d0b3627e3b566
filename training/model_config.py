"""The model's shape: one stdlib dataclass shared by every stage.

Training writes it into `ckpt.pt`, export copies it into `model_config.json`, and the
server reads it back from there. It must never import torch.
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


def window_keep(block_size: int) -> int:
    """Tokens kept when generation fills the context: the newest three quarters.

    Generation may run past the context: when the cache holds `block_size` tokens, the
    newest `window_keep` are re-prefilled (positions restart at 0) and decoding goes on.
    Sampling, export's checks and the server all slide the same way.
    """
    return max(1, (3 * block_size) // 4)
