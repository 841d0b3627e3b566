"""Per-request sampling in numpy, and stop strings that are never sent to the client.

    params = SamplingParams(max_tokens=64, temperature=0.8, top_k=40, top_p=0.95, seed=1)
    token = sample(logits_row, params, rng)             # rng: the request's own generator
    sent, held, hit = split_stop(text, params.stop)       # hold back a possible stop prefix
    lp, top_ids, top_lp = token_logprobs(logits, chosen, k=5)   # (N, V) rows at once

Each request owns its RNG and draws exactly one number per token, so a seeded request gives
the same tokens whatever else shares the batch. Same rules as training/generate.py.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0      # 0 = greedy
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # 1 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None   # None = off (no cost); 0..5 = chosen token's + k alternatives


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the k most likely tokens at its step."""
    token_id: int
    logprob: float
    top: list[tuple[int, float]]   # (token id, logprob), most likely first


def make_rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One (V,) row of logits -> a token id."""
    if params.temperature <= 0:
        return int(logits.argmax())
    x = logits.astype(np.float64) / params.temperature
    vocab = x.shape[0]
    if 0 < params.top_k < vocab:
        kth = np.partition(x, vocab - params.top_k)[vocab - params.top_k]
        x[x < kth] = -np.inf
    probs = np.exp(x - x.max())
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        ranked = probs[order] / probs.sum()
        # drop a token when the tokens ranked above it already reach top_p (the first stays)
        ranked[(np.cumsum(ranked) - ranked) >= params.top_p] = 0.0
        cum = np.cumsum(ranked)
        i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        return int(order[min(i, vocab - 1)])
    cum = np.cumsum(probs)
    i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return min(i, vocab - 1)


def token_logprobs(logits: np.ndarray, chosen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-softmax of raw logits (N, V) -> (chosen's logprob (N,), top ids (N, k), their
    logprobs (N, k), most likely first).

    The model's own distribution, before temperature, top-k and top-p (as vLLM reports by
    default), so the numbers do not depend on how a request samples.
    """
    x = logits.astype(np.float32, copy=False)
    shifted = x - x.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(x.shape[0])
    chosen_lp = logp[rows, chosen]
    k = min(k, x.shape[1])
    if k <= 0:
        return chosen_lp, np.zeros((x.shape[0], 0), np.int64), np.zeros((x.shape[0], 0), np.float32)
    top = np.argpartition(-logp, k - 1, axis=1)[:, :k]
    order = np.argsort(-logp[rows[:, None], top], axis=1, kind="stable")
    top_ids = np.take_along_axis(top, order, axis=1)
    return chosen_lp, top_ids, logp[rows[:, None], top_ids]


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
    for k in range(min(longest, len(text)), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stop):
            return text[:-k], tail, False
    return text, "", False


class TextStream:
    """Incremental detokenizer: text deltas that never end inside a UTF-8 sequence.

    Decodes a short window of recent ids (the prefix gives the decoder its context) and
    holds the text back while it ends in U+FFFD, i.e. while a byte-fallback or byte-level
    sequence is incomplete; a byte that can never complete is sent as U+FFFD once a later
    token arrives. (tokenizers' DecodeStream raises on such invalid sequences.)
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0    # ids[prefix:read] were already sent; they give the decoder context
        self.read = 0

    def step(self, token_id: int) -> str:
        self.ids.append(token_id)
        sent = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=False)
        text = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=False)
        if text.endswith("\ufffd") or len(text) <= len(sent):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        if len(self.ids) > 64:   # keep the window short; the offsets move with it
            drop = self.prefix
            self.ids, self.prefix, self.read = self.ids[drop:], 0, self.read - drop
        return text[len(sent):]
