"""Sampling for a whole batch in numpy, and stop strings.

    params = SamplingParams(max_tokens=64, temperature=0.8, top_k=40, top_p=0.95, seed=1)
    tokens = sample_batch(logits, [params, ...], [rng, ...])   # (N, V) -> (N,), one row a request
    sent, held, hit = split_stop(text, params.stop)            # hold back a possible stop prefix

Each request owns its RNG and draws exactly one number per sampled token, and every row is
computed on its own (no arithmetic mixes rows), so a seeded request gives the same tokens
whatever else shares the batch. Same rules as training/generate.py: temperature, then
top-k, then top-p (a token is dropped when the tokens ranked above it already reach top_p).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_LOGPROBS = 5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0      # 0 = greedy
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # 1 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None   # None = off; k = the chosen token's logprob + k alternatives
    # ---- the controls every peer has (serving/engine/penalties.py applies them, vectorised) ----
    presence_penalty: float = 0.0     # OpenAI's: minus this from every token generated so far (-2..2)
    frequency_penalty: float = 0.0    # OpenAI's: minus this times its count so far (-2..2)
    repetition_penalty: float = 1.0   # HF's / llama.cpp's / vLLM's: prompt and generated tokens' logits
                                      # divided by it (multiplied when negative); 1 = off
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, -100..100): -100 bans, +100 forces
    min_tokens: int = 0               # no end-of-text (nor stop string) before this many tokens
    n: int = 1                        # choices: each its own slot and RNG (seeds seed, seed+1, ...)
    prompt_logprobs: int | None = None   # the prompt's tokens' logprobs (echo), k alternatives each
    truncate_prompt_tokens: int | None = None   # keep the prompt's last k tokens (-1: as many as fit)

    @property
    def penalized(self) -> bool:
        """Whether any logit is changed before sampling (rows without pay nothing)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_tokens)


def make_rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)


def sample_batch(logits: np.ndarray, params: Sequence[SamplingParams],
                 rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """(N, V) logits, one row per request -> (N,) token ids."""
    tokens = logits.argmax(-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not rows:
        return tokens
    u = np.array([rngs[i].random() for i in rows])
    temperature = np.array([params[i].temperature for i in rows])
    top_k = np.array([params[i].top_k for i in rows])
    top_p = np.array([params[i].top_p for i in rows])
    x = logits[rows].astype(np.float64) / temperature[:, None]
    vocab = x.shape[1]
    filtered = ((top_k > 0) & (top_k < vocab)) | (top_p < 1.0)
    order = np.broadcast_to(np.arange(vocab), x.shape)
    if filtered.any():   # only these rows pay for a sort
        f = np.flatnonzero(filtered)
        ranked = np.argsort(-x[f], axis=1, kind="stable")
        x[f] = np.take_along_axis(x[f], ranked, axis=1)
        order = order.copy()
        order[f] = ranked
    probs = np.exp(x - x.max(axis=1, keepdims=True))
    k = np.where((top_k > 0) & filtered, top_k, vocab)
    probs[np.arange(vocab)[None] >= k[:, None]] = 0.0          # sorted rows: keep the first k
    cum = np.cumsum(probs, axis=1)
    nucleus = (cum - probs) >= (top_p * cum[:, -1])[:, None]     # mass above already reaches top_p
    probs[nucleus & filtered[:, None]] = 0.0
    cum = np.cumsum(probs, axis=1)
    pick = np.minimum((cum <= (u * cum[:, -1])[:, None]).sum(axis=1), vocab - 1)
    tokens[rows] = order[np.arange(len(rows)), pick]
    return tokens


def split_stop(text: str, stop: Sequence[str]) -> tuple[str, str, bool]:
    """(text to send, text to hold back, stop hit?) for not-yet-sent text.

    On a hit, everything from the stop string on is dropped. Otherwise the longest tail
    that could still grow into a stop string is held back until the next token decides.
    """
    if not stop:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    longest = max(len(s) for s in stop) - 1
    for n in range(min(longest, len(text)), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stop):
            return text[:-n], tail, False
    return text, "", False
