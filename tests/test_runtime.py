"""The runtime's parts on their own: how a step is spread over the cores (every plan gives the
same logits; the calibration keeps the fastest per row count; the overrides), and the KV
cache's memory (resident only where tokens were written, given back on release)."""
from __future__ import annotations

import numpy as np
import pytest

from core.artifact import load_artifact
from serving.engine.runtime import Runtime
from serving.engine.spread import FRONT_END_S, Plan, Plans, candidates


@pytest.fixture(scope="module")
def rt(art):
    return Runtime(load_artifact(art), "cpu", threads=2, slots=8)


def test_every_plan_gives_the_same_logits(rt):
    prompts = [[(7 * i + j) % 50 + 1 for j in range(3 + i)] for i in range(8)]
    rt.prefill(0, prompts)
    tokens, lengths = np.arange(8, dtype=np.int64) + 3, np.array([len(p) for p in prompts], np.int64)
    for rows in (1, 3, 8):
        outs = {p: rt._decode(tokens[:rows], lengths[:rows], p) for p in candidates(2, rows)}
        first = next(iter(outs.values()))
        assert len(outs) >= 2
        for p, out in outs.items():
            np.testing.assert_allclose(out, first, atol=1e-5, err_msg=str(p))
    summary = rt.calibrate()
    assert summary.startswith("spread over 2 cores, calibrated in") and "1: " in summary
    assert set(rt.plans.table) == {1, 2, 4, 8}
    kept = {p.threads for p in rt.plans.table.values()} | {2}
    assert set(rt._sessions) == kept and "sessions kept: " in summary   # the others are dropped
    assert np.isfinite(rt.decode(tokens[:5], lengths[:5])).all()


def test_calibration_keeps_the_fastest_plan_per_row_count():
    # a model whose lone row wants both threads, and whose crowd wants slices
    cost = {(Plan(1, 2), 1): 1.0, (Plan(1, 1), 1): 1.5, (Plan(1, 2), 2): 1.2, (Plan(2, 1), 2): 1.3}
    timed = []

    def time_step(plan: Plan, rows: int) -> float:
        timed.append(rows)
        return cost.get((plan, rows), 2.0 * rows if plan.slices == 1 else 1.0 * rows)

    plans = Plans(2)
    assert plans.get(1) == Plan(1, 1) and plans.get(6) == Plan(2, 1)     # before: the old rule
    plans.calibrate(time_step, max_rows=48)
    assert [plans.get(n) for n in (1, 2, 3, 4, 7, 48)] == [Plan(1, 2), Plan(1, 2), Plan(1, 2),
                                                           Plan(2, 1), Plan(2, 1), Plan(2, 1)]
    assert max(timed) == 8            # slicing won at 4 and 8 by >10%: 16, 32, 48 were not timed
    assert "48" not in plans.summary.split("; ")[-2] and "16+: slices (untimed)" in plans.summary


def test_threads_that_meet_at_every_operator_must_save_more_than_the_front_end_needs():
    # two threads win in isolation either way, at one row (against one thread, which leaves
    # a core to the event loop and the clients) and at two (against two slices); they are
    # chosen only when they save more than the front end's per-step work (FRONT_END_S)
    for saving, one, two in ((0.5 * FRONT_END_S, Plan(1, 1), Plan(2, 1)), (3 * FRONT_END_S, Plan(1, 2), Plan(1, 2))):
        plans = Plans(2)
        plans.calibrate(lambda plan, rows: 1e-3 - (saving if plan.threads > 1 else 0.0), max_rows=2)
        assert (plans.get(1), plans.get(2)) == (one, two), saving


def test_an_override_keeps_only_its_sessions(art):
    rt = Runtime(load_artifact(art), "cpu", threads=2, slots=4, spread="threads")
    rt.calibrate()
    assert set(rt._sessions) == {2} and rt.single is rt.session
    rt = Runtime(load_artifact(art), "cpu", threads=2, slots=4, spread="slices")
    rt.calibrate()
    assert set(rt._sessions) == {1, 2}


def test_overrides_and_one_core():
    assert Plans(4, "threads").get(9) == Plan(1, 4)
    assert Plans(4, "slices").get(2) == Plan(2, 1) and Plans(4, "slices").get(9) == Plan(4, 1)
    assert Plans(1).get(9) == Plan(1, 1)
    assert candidates(4, 3) == [Plan(1, 4), Plan(2, 2), Plan(1, 1)]
    with pytest.raises(ValueError, match="spread must be one of auto, threads, slices"):
        Plans(2, "both")


def test_the_cache_holds_memory_only_where_tokens_were_written(art):
    rt = Runtime(load_artifact(art), "cpu", threads=1, slots=8)
    cache = rt.cache
    assert cache.resident_bytes() == 0 and cache.nbytes > 0
    rt.prefill(2, [[5, 6, 7]])
    one = cache.resident_bytes()
    assert 0 < one <= cache.nbytes / 8           # that slot alone (its row, at most), not 8 slots
    before = [k[2, :, :3].copy() for k, _ in map(cache.host, range(rt_layers(rt)))]
    rt.copy_prefix(2, 5, 3)
    assert cache.resident_bytes() == 2 * one
    cache.release(5)
    assert cache.resident_bytes() == one and not any(k[5].any() for k, _ in map(cache.host, range(rt_layers(rt))))
    assert all(np.array_equal(k[2, :, :3], b) for (k, _), b in zip(map(cache.host, range(rt_layers(rt))), before))


def rt_layers(rt: Runtime) -> int:
    return len(rt.past_names) // 2
