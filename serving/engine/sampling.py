"""Sampling for a whole batch in numpy, and stop strings.

    params = SamplingParams(max_tokens=64, temperature=0.8, top_k=40, top_p=0.95, seed=1)
    tokens = sample_batch(logits, [params, ...], [draws, ...])  # (N, V) -> (N,), one row a request
    tokens = sample_batch(logits, params, draws, allowed=[None, mask, ...])   # per-row allowed tokens
    sent, held, hit = split_stop(text, params.stop)            # hold back a possible stop prefix

Same rules as training/generate.py: temperature, then top-k, then top-p (a token is dropped
when the tokens ranked above it already reach top_p). Why it is shaped so (issue 25: the old
sampler took 2.4 ms a step for 32 rows, a quarter of the step; bench/sampler_speed.py):
- Each row pays only for what it asked: greedy rows an argmax; temperature rows one exp and
  a block-wise inverse CDF (sums of 64-token blocks, then one block's cumulative sum: no
  cumulative sum over the vocabulary); top-k and top-p rows first find their floor, the
  smallest logit they keep, from their largest c logits (np.partition: c = k, or 64 doubled
  until those hold top_p of the mass), and mask below it; nothing sorts a vocabulary. As in
  training/generate.py, a token tied with the k-th is kept. float32 throughout.
- Randomness is counter-based (`Draws`): a request's i-th draw is a hash of (its seed, i),
  so the draws for a whole batch are one vectorised hash, and a seeded request gives the
  same tokens whatever shares its batch, whichever row it is, and whether or not its tokens
  are verified in speculative batches (serving/engine/speculate.py rewinds the counter past
  a rejected draft). Every row is computed on its own: no arithmetic mixes rows.
- One uniform draw u per token, turned into a token by the inverse CDF, is also the exact
  acceptance rule for a speculative point-mass draft x: the token u picks equals x with
  probability p(x), and when it does not, it is distributed as p with x removed and
  renormalised, so verifying a draft against the sampled token loses nothing.
- `allowed` (structured output): per row None or a bool [V] mask (True = may be drawn), or
  an int array of the allowed ids, or one (N, V) bool array. Disallowed tokens become -inf
  before any other step, greedy rows included; a row that allows nothing is an error.
"""
from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_LOGPROBS = 5
BLOCK = 64        # inverse CDF: tokens per block (a row sum each, then one block's cumulative sum)
NUCLEUS0 = 64     # top-p: candidates tried first (8x more while they hold less than top_p)


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
    grammar: str | None = None        # structured output: llguidance's grammar (serving/structured.py
                                      # writes it); None = free text
    grammar_trace: bool = False       # report, per token sampled under the grammar, what the model
                                      # wanted before the mask (requests.GrammarStep); the playground's
                                      # structured mode shows it

    @property
    def penalized(self) -> bool:
        """Whether any logit is changed before sampling (rows without pay nothing)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_tokens)


# ---- counter-based randomness -----------------------------------------------------------
_GAMMA, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class Draws:
    """A request's random numbers: draw i is a hash of (seed, i), so any draw can be computed
    (or recomputed, after a rewind) on its own. No seed: a random one."""

    __slots__ = ("key", "count")

    def __init__(self, seed: int | None = None):
        seed = secrets.randbits(64) if seed is None else int(seed) % 2**64
        self.key = int(_mix(np.array([seed], np.uint64))[0])   # distinct streams for seeds s, s+1
        self.count = 0                                           # draws taken so far


def make_rng(seed: int | None) -> Draws:
    return Draws(seed)


def uniforms(draws: Sequence[Draws]) -> np.ndarray:
    """The next draw of each, in [0, 1) as float64, one vectorised hash for all; each
    advances by one (a `Draws` listed k times gets its next k draws, in row order)."""
    keys, counts = [], []
    for d in draws:
        keys.append(d.key)
        counts.append(d.count)
        d.count += 1
    z = np.array(keys, np.uint64) + (np.array(counts, np.uint64) + np.uint64(1)) * _GAMMA
    return (_mix(z) >> np.uint64(11)).astype(np.float64) * 2.0**-53


# ---- the sampler ------------------------------------------------------------------------
def sample_batch(logits: np.ndarray, params: Sequence[SamplingParams], rngs: Sequence[Draws],
                 allowed=None) -> np.ndarray:
    """(N, V) logits, one row per request -> (N,) token ids. `rngs[i]` is row i's `Draws`;
    `allowed`: see the module's docstring."""
    n, vocab = logits.shape
    if n == 1 and allowed is None and params[0].temperature > 0 and not _cuts(params[0], vocab):
        return np.array([_one_row(logits[0], params[0].temperature, rngs[0])])
    if allowed is not None:
        logits = apply_allowed(logits, allowed)
    temps = np.array([p.temperature for p in params], np.float64)
    hot = np.flatnonzero(temps > 0)
    if not len(hot):
        return logits.argmax(-1)
    tokens = np.empty(n, np.int64)
    if len(hot) < n:
        cold = np.flatnonzero(temps <= 0)
        tokens[cold] = logits[cold].argmax(-1)
    u = uniforms([rngs[i] for i in hot])
    x = logits if len(hot) == n else logits[hot]
    # (x - max) / T: the best token at 0, so neither a tiny nor a huge T over- or underflows
    inv = np.clip(1.0 / temps[hot], 1e-30, 1e30).astype(np.float32)[:, None]
    x = np.subtract(x, x.max(1, keepdims=True), dtype=np.float32)      # a new float32 array
    x *= inv
    top_k = np.array([params[i].top_k for i in hot], np.int64)
    top_p = np.array([params[i].top_p for i in hot], np.float64)
    cut = ((top_k > 0) & (top_k < vocab)) | (top_p < 1.0)
    if cut.any():   # only these rows pay for finding their cut, and for masking below it
        if cut.all():
            x = np.where(x >= _floors(x, top_k, top_p)[:, None], x, np.float32(-np.inf))
        else:
            f = np.flatnonzero(cut)
            floor = _floors(x[f], top_k[f], top_p[f])
            x[f] = np.where(x[f] >= floor[:, None], x[f], np.float32(-np.inf))
    tokens[hot] = _inverse_cdf(x, u)
    return tokens


def _cuts(p: SamplingParams, vocab: int) -> bool:
    return 0 < p.top_k < vocab or p.top_p < 1.0


_MASK = 2**64 - 1                                         # _mix's constants as Python ints (_one_row)
_GAMMA_I, _M1_I, _M2_I = int(_GAMMA), int(_M1), int(_M2)


def _one_row(row: np.ndarray, temperature: float, d: Draws) -> int:
    """A lone row at a temperature with no top-k or top-p: the batch path's arithmetic, step
    for step (so a seeded row draws the same token alone or in a batch), without the
    batch's fancy indexing, which is most of its cost for one row (a lone stream's token:
    ~37 us there, bench/sampler_speed.py). The draw's SplitMix64 runs on Python ints."""
    d.count += 1
    z = (d.key + d.count * _GAMMA_I) & _MASK
    z = ((z ^ (z >> 30)) * _M1_I) & _MASK
    z = ((z ^ (z >> 27)) * _M2_I) & _MASK
    u = ((z ^ (z >> 31)) >> 11) * 2.0**-53
    inv = np.float32(min(max(1.0 / temperature, 1e-30), 1e30))
    x = np.subtract(row, row.max(), dtype=np.float32)
    x *= inv
    vocab = x.shape[0]
    e = np.zeros(-(-vocab // BLOCK) * BLOCK, np.float32)
    np.exp(x, out=e[:vocab])
    e = e.reshape(-1, BLOCK)
    cum = np.cumsum(e.sum(1), dtype=np.float64)
    target = u * cum[-1]
    b = _first_above_1d(cum, target)
    inside = target - (cum[b - 1] if b > 0 else 0.0)
    return b * BLOCK + _first_above_1d(np.cumsum(e[b], dtype=np.float64), inside)


def _first_above_1d(cum: np.ndarray, target: float) -> int:
    """_first_above for one row (cum never decreases: searchsorted counts the entries <= target)."""
    return int(min(np.searchsorted(cum, target, side="right"), np.searchsorted(cum, cum[-1], side="left")))


def apply_allowed(logits: np.ndarray, allowed) -> np.ndarray:
    """`logits` with every disallowed token at -inf (a copy; rows with no mask unchanged)."""
    n, vocab = logits.shape
    if isinstance(allowed, np.ndarray) and allowed.ndim == 2:
        rows, masks = np.arange(n), allowed.astype(bool, copy=False)
    else:
        if len(allowed) != n:
            raise ValueError(f"allowed has {len(allowed)} entries for {n} rows")
        rows = [i for i, a in enumerate(allowed) if a is not None]
        if not rows:
            return logits
        masks = np.zeros((len(rows), vocab), bool)
        for j, i in enumerate(rows):
            a = np.asarray(allowed[i])
            if a.dtype == bool:
                masks[j] = a
            else:
                masks[j, a] = True
    empty = ~masks.any(1)
    if empty.any():
        raise ValueError(f"row {np.asarray(rows)[empty][0]} allows no token")
    out = logits.copy()
    out[rows] = np.where(masks, logits[rows], np.float32(-np.inf))
    return out


def _inverse_cdf(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """softmax(x) sampled by u per row, for rows whose largest x is 0: exp once, the sums of
    64-token blocks, then the cumulative sum of one block (never of the whole vocabulary)."""
    rows, vocab = x.shape
    blocks = -(-vocab // BLOCK)
    e = np.zeros((rows, blocks * BLOCK), np.float32)
    np.exp(x, out=e[:, :vocab])
    e = e.reshape(rows, blocks, BLOCK)
    sums = e.sum(2)                                           # (R, blocks), float32
    cum = np.cumsum(sums, axis=1, dtype=np.float64)
    target = u * cum[:, -1]
    b = _first_above(cum, target)
    r = np.arange(rows)
    inside = target - np.where(b > 0, cum[r, b - 1], 0.0)     # how far into block b
    return b * BLOCK + _first_above(np.cumsum(e[r, b], axis=1, dtype=np.float64), inside)


def _first_above(cum: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row the first index whose cumulative weight exceeds target (so never one of zero
    weight); when rounding puts target at or past the total, the last index with weight."""
    idx = (cum <= target[:, None]).sum(1)
    return np.minimum(idx, (cum >= cum[:, -1:]).argmax(1))


def _floors(x: np.ndarray, top_k: np.ndarray, top_p: np.ndarray) -> np.ndarray:
    """Each row's smallest kept logit under its top-k, then top-p (rows whose largest x is 0,
    each asking for one or both)."""
    # Only the row's largest c values are read (np.partition; c = k, or for top-p alone 64,
    # 512, ... until they hold top_p of the mass), so nothing sorts the vocabulary; values,
    # not the order among ties, decide, so a row's floor never depends on the rest of the batch.
    rows, vocab = x.shape
    k = np.where((top_k > 0) & (top_k < vocab), top_k, vocab)
    mass = np.zeros(rows)                      # top-p alone: a share of the whole row's mass
    if (k == vocab).any():
        mass[k == vocab] = np.exp(x[k == vocab]).sum(1, dtype=np.float64)
    floor = np.empty(rows, np.float32)
    todo, c = np.arange(rows), NUCLEUS0
    while len(todo):
        kk = k[todo]
        c = min(vocab, max(c, int(kk[kk < vocab].max(initial=0))))
        vals = -np.sort(-np.partition(x[todo], vocab - c, axis=1)[:, vocab - c:], axis=1)   # (R, c)
        probs = np.where(np.arange(c) < kk[:, None], np.exp(vals, dtype=np.float64), 0.0)
        cum = np.cumsum(probs, axis=1)
        m = np.where(kk < vocab, cum[:, -1], mass[todo])
        kept = (cum - probs < top_p[todo, None] * m[:, None]) & (probs > 0)
        kept[:, 0] = True
        last = c - 1 - kept[:, ::-1].argmax(1)
        done = (kk <= c) | (last < c - 1) | (c >= vocab)
        floor[todo[done]] = vals[done, last[done]]
        todo, c = todo[~done], 8 * c
    return floor


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
