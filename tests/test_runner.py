"""The runner alone (serving/engine/runner.py) on the tiny model's real ONNX Runtime session:
each kind of plan gives the logits and the cache that plain runtime calls give."""
from __future__ import annotations

import numpy as np
import pytest

from core.artifact import load_artifact
from serving.engine.runner import Decode, Extend, Prefill, Runner
from serving.engine.runtime import Runtime

A, B, C = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [20, 21, 22], [30, 31, 32, 33, 34]


@pytest.fixture(scope="module")
def rt(art):
    return Runtime(load_artifact(art), "cpu", threads=2, slots=8)


def reference(rt: Runtime, ids: list[int], spare: int = 7) -> np.ndarray:
    """Every position's logits of `ids` prefilled alone, in a slot nobody else uses."""
    return rt.prefill(spare, [ids], all_positions=True)[0]


def same_cache(rt: Runtime, a: int, b: int, n: int) -> bool:
    return all(np.allclose(buf[a, :, :n], buf[b, :, :n], atol=1e-5)
               for layer in range(2) for buf in rt.cache.host(layer))


def test_prefills_in_runs_with_copies_and_a_prefix_hit(rt):
    runner = Runner(rt, eos=0)
    list(runner.prefill([Prefill(4, A)]))                       # slot 4 holds A, as a kept cache would
    plan = [Prefill(0, B, copies=(2,)), Prefill(1, C, echo=2), Prefill(4, A + [15, 16], reused=len(A))]
    outs = list(runner.prefill(plan))
    # the hit goes first (an extension of slot 4), then slots 0 and 1 together, the copy after them
    assert [o.slots for o in outs] == [[4], [0, 1, 2]] and outs[1].lengths == [3, 5, 3]
    np.testing.assert_allclose(outs[0].logits[0], reference(rt, A + [15, 16])[-1], atol=1e-4)
    for row, ids in zip(outs[1].logits, (B, C, B)):
        np.testing.assert_allclose(row, reference(rt, ids)[-1], atol=1e-4)
    assert list(outs[1].full) == [1] and outs[1].full[1].shape == (len(C), rt.vocab)
    np.testing.assert_allclose(outs[1].full[1], reference(rt, C), atol=1e-4)
    rt.prefill(7, [B])
    assert same_cache(rt, 2, 7, len(B)) and same_cache(rt, 0, 7, len(B))


def test_decode_returns_the_owned_rows_and_extend_every_position(rt):
    runner = Runner(rt, eos=0)
    list(runner.prefill([Prefill(0, A), Prefill(2, B)]))
    lengths = np.array([len(A), 3, len(B)])                     # slot 1 is free, fed at its kept length
    logits = runner.decode(Decode(np.array([40, 0, 41]), lengths, [0, 2]))
    assert logits.shape == (2, rt.vocab)
    np.testing.assert_allclose(logits[0], reference(rt, A + [40])[-1], atol=1e-4)
    np.testing.assert_allclose(logits[1], reference(rt, B + [41])[-1], atol=1e-4)
    fed = [42, 43, 44]
    out = runner.extend(Extend(0, len(A) + 1, fed, fed[1:]))
    np.testing.assert_allclose(out, reference(rt, A + [40] + fed)[-3:], atol=1e-4)


def test_warmup_runs(rt):
    Runner(rt, eos=0).warmup()
