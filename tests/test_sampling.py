"""The batch sampler on its own: the distribution it draws from (chi-square against the
definition, for plain temperature, top-k, top-p and both), seeded rows that give the same
tokens in any batch, the counter-based draws, extreme temperatures and the per-row allowed
mask (structured output)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from serving.engine.sampling import Draws, SamplingParams, _floors, make_rng, sample_batch, uniforms


def _params(**kw):
    return SamplingParams(**{"max_tokens": 10, **kw})


def expected(logits: np.ndarray, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
    """The definition (training/generate.py's, float64): temperature, keep the k largest (ties
    with the k-th too), then drop every token whose higher-ranked tokens reach top_p."""
    x = logits.astype(np.float64) / temperature
    if top_k:
        x = np.where(x >= np.sort(x)[-top_k], x, -np.inf)
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p, kind="stable")
        above = np.cumsum(p[order]) - p[order]
        p[order[above >= top_p]] = 0.0
        p /= p.sum()
    return p


def chi_square_ok(draws: np.ndarray, probs: np.ndarray) -> tuple[bool, float, float]:
    """Pearson's statistic over the tokens with probability, against the 1e-4 critical value
    (Wilson-Hilferty); any draw of a zero-probability token fails outright."""
    n, counts = len(draws), np.bincount(draws, minlength=len(probs))
    if counts[probs == 0].any():
        return False, math.inf, 0.0
    keep = probs > 0
    stat = float((((counts[keep] - n * probs[keep]) ** 2) / (n * probs[keep])).sum())
    df = int(keep.sum()) - 1
    crit = df * (1 - 2 / (9 * df) + 3.72 * math.sqrt(2 / (9 * df))) ** 3 if df else 0.0
    return stat <= crit, stat, crit


LOGITS = np.random.default_rng(7).normal(0, 2, 60).astype(np.float32)
CASES = [dict(temperature=1.0), dict(temperature=0.6), dict(temperature=1.0, top_k=8),
         dict(temperature=1.3, top_p=0.7), dict(temperature=0.9, top_k=20, top_p=0.8)]


@pytest.mark.parametrize("kw", CASES, ids=["t1", "t0.6", "top-k", "top-p", "top-k+top-p"])
def test_draws_follow_the_distribution(kw):
    n = 40000
    rows = np.tile(LOGITS, (n, 1))
    draws = sample_batch(rows, [_params(**kw)] * n, [make_rng(i) for i in range(n)])
    ok, stat, crit = chi_square_ok(draws, expected(LOGITS, **kw))
    assert ok, f"chi-square {stat:.1f} > {crit:.1f} for {kw}"
    one = make_rng(12345)        # one request's successive draws follow it too
    ok, stat, crit = chi_square_ok(sample_batch(rows, [_params(**kw)] * n, [one] * n), expected(LOGITS, **kw))
    assert ok and one.count == n


def test_floors_match_the_definition_for_any_nucleus_size():
    """The smallest kept logit, from a nucleus of a few tokens to thousands (the candidates
    grow 64, 512, 4096: every round is taken), against the sorted definition."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, s, (8, 5000)) for s in (0.5, 2, 8)]).astype(np.float32)
    x -= x.max(1, keepdims=True)
    top_k = rng.choice([0, 0, 1, 7, 100, 4999], len(x))
    top_p = np.where(top_k == 0, rng.choice([0.3, 0.9, 0.99], len(x)), rng.choice([1.0, 0.3, 0.9, 0.99], len(x)))
    floors = _floors(x, top_k, top_p)
    for row, k, q, got in zip(x, top_k, top_p, floors):
        p = expected(row, top_k=int(k), top_p=float(q))
        assert got == row[p > 0].min(), (k, q)
    assert (expected(x[0], top_p=0.99) > 0).sum() > 4096 > (expected(x[-1], top_p=0.99) > 0).sum()


MIXED = [_params(temperature=0.0), _params(temperature=0.7), _params(temperature=1.3, top_k=5),
         _params(temperature=1.0, top_p=0.6), _params(temperature=0.9, top_k=20, top_p=0.9),
         _params(temperature=1.1, top_k=3), _params(temperature=1.0, top_p=0.95)]


def test_a_seeded_row_gives_the_same_tokens_in_any_batch():
    """Each row's tokens over 30 steps, alone, then inside batches of other composition and
    order (every other row a stranger with its own settings): identical, step for step."""
    rng = np.random.default_rng(0)
    steps = [rng.normal(0, 3, (len(MIXED), 97)).astype(np.float32) for _ in range(30)]
    alone = []
    for i, p in enumerate(MIXED):
        d = make_rng(100 + i)
        alone.append([int(sample_batch(s[i:i + 1], [p], [d])[0]) for s in steps])
    for trial in range(4):
        order = rng.permutation(len(MIXED))
        strangers = [_params(temperature=float(t), top_k=int(k), top_p=float(q)) for t, k, q in
                     zip(rng.uniform(0, 2, len(MIXED)), rng.integers(0, 30, len(MIXED)), rng.uniform(0.3, 1, len(MIXED)))]
        draws = {i: make_rng(100 + i) for i in order}
        got = {i: [] for i in order}
        for s in steps:
            noise = rng.normal(0, 3, (len(MIXED), 97)).astype(np.float32)
            batch = np.empty((2 * len(MIXED), 97), np.float32)
            batch[0::2], batch[1::2] = s[order], noise
            params = [q for i, stranger in zip(order, strangers) for q in (MIXED[i], stranger)]
            rngs = [r for i in order for r in (draws[i], Draws())]
            out = sample_batch(batch, params, rngs)
            for j, i in enumerate(order):
                got[i].append(int(out[2 * j]))
        assert [got[i] for i in range(len(MIXED))] == alone, f"trial {trial}"


def test_draws_are_a_function_of_seed_and_count():
    a, b = make_rng(5), make_rng(5)
    first = uniforms([a] * 4)                          # a's draws 0..3 in one call
    assert np.array_equal(first, np.concatenate([uniforms([b]) for _ in range(4)]))
    assert a.count == 4 and ((first >= 0) & (first < 1)).all()
    b.count = 2                                        # a rewind gives the same draws again
    assert np.array_equal(uniforms([b, b]), first[2:])
    neighbours = uniforms([make_rng(6)] * 4)           # seed + 1 (a request's next choice)
    assert not np.isin(neighbours, first).any()
    assert make_rng(None).key != make_rng(None).key    # unseeded: a fresh random stream each
    assert make_rng(2**70 + 5).key == make_rng(5).key  # seeds wrap at 64 bits


def test_greedy_extremes_and_banned_tokens():
    logits = np.array([[0.0, 3.0, -np.inf, 2.9]], np.float32)
    assert sample_batch(logits, [_params(temperature=0.0)], [make_rng(0)])[0] == 1
    tiny = sample_batch(np.tile(logits, (50, 1)), [_params(temperature=1e-30)] * 50, [make_rng(1)] * 50)
    assert (tiny == 1).all()                            # a tiny temperature is greedy, not NaN
    huge = sample_batch(np.tile(logits, (4000, 1)), [_params(temperature=1e30)] * 4000, [make_rng(2)] * 4000)
    assert set(huge.tolist()) == {0, 1, 3}              # a huge one is uniform over the allowed
    assert sample_batch(logits, [_params(top_k=1)], [make_rng(3)])[0] == 1


def test_allowed_masks_apply_per_row_greedy_rows_too():
    logits = np.tile(np.arange(10, dtype=np.float32), (3, 1))
    params = [_params(temperature=0.0), _params(temperature=1.0, top_k=2), _params(temperature=0.0)]
    mask = np.zeros(10, bool)
    mask[[2, 4]] = True
    out = sample_batch(logits, params, [make_rng(0)] * 3, allowed=[mask, np.array([1, 3]), None])
    assert out[0] == 4 and out[1] in (1, 3) and out[2] == 9
    both = np.zeros((3, 10), bool)
    both[:, 5] = True
    assert (sample_batch(logits, params, [make_rng(0)] * 3, allowed=both) == 5).all()
    with pytest.raises(ValueError, match="row 0 allows no token"):
        sample_batch(logits, params, [make_rng(0)] * 3, allowed=[np.zeros(10, bool), None, None])


@pytest.mark.parametrize("vocab", [97, 2000, 50257])
def test_a_lone_rows_fast_path_draws_what_the_batch_path_draws(vocab):
    # sample_batch takes a shortcut for one row at a temperature (no top-k/top-p); a seeded
    # request must still draw the same tokens alone as beside others
    rng = np.random.default_rng(vocab)
    for i in range(150):
        logits = (rng.standard_normal((2, vocab)) * rng.choice([0.1, 3.0, 30.0])).astype(np.float32)
        t = float(rng.choice([1e-6, 0.3, 1.0, 2.5, 1e6]))
        p = SamplingParams(temperature=t, seed=i)
        alone = sample_batch(logits[:1], [p], [make_rng(i)])
        beside = sample_batch(logits, [p, SamplingParams(temperature=1.0, top_k=5)], [make_rng(i), make_rng(i + 1)])
        assert alone[0] == beside[0], (i, t)
