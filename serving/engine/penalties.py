"""Penalties, logit_bias and min_tokens over a step's rows at once, from per-slot token counts.

    pen = Penalties(slots=32, vocab=V, eos=0)     # owned by the engine thread
    pen.admit(slot, prompt_ids, params)           # a request takes the slot: its row starts afresh
    adjusted = pen.apply(logits, slots, reqs)     # (N, V) -> (N, V); `logits` untouched
    pen.record(slots, tokens)                     # count what each row just sampled

State is three [slots, vocab] arrays: how often each slot's request has generated each
token, which tokens its prompt holds, and its dense logit_bias row, plus each slot's
settings as [slots] arrays (set at admission, so a step builds nothing per row). A step
changes only the rows whose request asked for something (`SamplingParams.penalized`), each
operation one numpy expression over those rows; a batch without them pays one check.

Definitions (the order vLLM applies them in): `repetition_penalty` r (Hugging Face's,
llama.cpp's, vLLM's) divides the logit of every token in the prompt or generated so far by r
when it is positive and multiplies it by r when negative; then OpenAI's `frequency_penalty`
f and `presence_penalty` p subtract `f * count + p * (count > 0)` over generated tokens;
then `logit_bias` is added (-100 is a ban: -inf, so the token can never be drawn); then
end-of-text is banned while fewer than `min_tokens` tokens exist. Logprobs are computed from
the raw logits, before any of this.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.engine.sampling import SamplingParams

BAN = -100.0


class Penalties:
    def __init__(self, slots: int, vocab: int, eos: int):
        self.eos = eos
        self.counts = np.zeros((slots, vocab), np.int32)   # generated tokens, per slot
        self.prompt = np.zeros((slots, vocab), bool)       # tokens of the prompt (repetition_penalty)
        self.bias = np.zeros((slots, vocab), np.float32)   # logit_bias, dense
        self.on = np.zeros(slots, bool)                    # the slot's request asked for any of it
        # each slot's request's settings, as arrays, so a step builds nothing per row
        self.rep, self.freq, self.pres = np.ones(slots, np.float32), np.zeros(slots, np.float32), \
            np.zeros(slots, np.float32)
        self.biased, self.min_tokens = np.zeros(slots, bool), np.zeros(slots, np.int64)

    def admit(self, slot: int, prompt_ids: Sequence[int], p: SamplingParams) -> None:
        self.on[slot] = p.penalized
        if not p.penalized:
            return
        self.counts[slot] = 0
        self.prompt[slot] = False
        self.prompt[slot, np.asarray(prompt_ids, np.int64)] = True
        self.bias[slot] = 0.0
        for token, value in p.logit_bias:
            self.bias[slot, token] = -np.inf if value <= BAN else value
        self.rep[slot], self.freq[slot], self.pres[slot] = p.repetition_penalty, p.frequency_penalty, p.presence_penalty
        self.biased[slot] = bool(p.logit_bias)
        self.min_tokens[slot] = 0 if p.ignore_eos else p.min_tokens

    def record(self, slots: Sequence[int], tokens: np.ndarray) -> None:
        slots = np.asarray(slots)
        on = self.on[slots]
        if on.any():   # a slot appears once per step, so plain fancy indexing counts right
            self.counts[slots[on], tokens[on]] += 1

    def apply(self, logits: np.ndarray, slots: Sequence[int], reqs: Sequence) -> np.ndarray:
        """The logits to sample from: `logits` itself when no row asked, else a copy. `reqs`
        are the rows' requests (their `generated` counts the tokens so far)."""
        slots = np.asarray(slots)
        rows = np.flatnonzero(self.on[slots])
        if not len(rows):
            return logits
        s = slots[rows]
        x = logits[rows].astype(np.float32)            # (R, V)
        counts = self.counts[s]
        rep = self.rep[s][:, None]
        if (rep != 1.0).any():
            seen = (counts > 0) | self.prompt[s]
            # A tiny penalty overflows a positive logit to +inf, and inf - inf in the softmax
            # is NaN: keep what it divided finite (it still dominates every other logit).
            with np.errstate(over="ignore"):
                x = np.where(seen, np.where(x > 0, x / rep, x * rep), x)
            np.minimum(x, np.finfo(np.float32).max, out=x)
        freq, pres = self.freq[s][:, None], self.pres[s][:, None]
        if freq.any() or pres.any():
            x -= freq * counts + pres * (counts > 0)
        if self.biased[s].any():
            x += self.bias[s]
        early = self.min_tokens[s] > 0
        if early.any():
            early &= np.array([reqs[i].generated for i in rows]) < self.min_tokens[s]
            x[early, self.eos] = -np.inf
        out = logits.copy()
        out[rows] = x
        return out
