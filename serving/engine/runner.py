"""The runner: runs what the scheduler planned on the KV cache's slots and returns logits.

    runner = Runner(runtime, eos)
    for out in runner.prefill([Prefill(slot=3, window=ids), Prefill(4, ids2, copies=(5,))]):
        out.slots, out.lengths, out.logits       # (N, V): one row per slot, copies included
        out.full                                 # (len(ids), V) per echoing slot, else None
    logits = runner.decode(Decode(tokens, lengths, slots))   # (len(slots), V): the owned rows'
    logits = runner.extend(Extend(slot, cached, fed, draft)) # (len(fed), V): a draft verified

Why a part of its own: how a plan becomes graph calls (adjacent slots prefilled together,
a prefix-cache hit fed as an extension, a request's other choices copied from its first,
the decode over rows [0, rows)) is the runtime's business, not the scheduler's (who runs)
nor the sampler's (what they draw). It reads the plan and writes only the KV cache, through
the Runtime (serving/engine/runtime.py); the slot table is the scheduler's.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from serving.engine.runtime import Runtime
from serving.engine.slots import SlotTable


@dataclass
class Prefill:
    """Put `window` into `slot`'s cache from position 0 (a prompt joining, or a full row's
    newest tokens sliding back in)."""
    slot: int
    window: list[int]
    reused: int = 0                  # of those already in the slot's cache (a prefix-cache hit)
    copies: tuple[int, ...] = ()     # slots that then take a copy (a request's other choices)
    echo: int | None = None          # k: return every position's logits (the prompt's logprobs)


@dataclass
class Decode:
    """One token for every row in [0, len(tokens)); `slots` are the owned ones, whose logits
    come back (free rows are computed and dropped)."""
    tokens: np.ndarray
    lengths: np.ndarray
    slots: list[int]


@dataclass
class Extend:
    """A lone row's step with a draft: feed the pending token and the draft in one call."""
    slot: int
    cached: int                      # tokens in its cache
    fed: list[int]                   # [pending token, *draft]
    draft: list[int]


@dataclass
class Prefilled:
    """What one prefill call gives: the next-token logits of each slot filled (a copy's row is
    its source's), and for echoing slots every position's."""
    slots: list[int]
    lengths: list[int]
    logits: np.ndarray
    full: dict[int, np.ndarray]


class Runner:
    def __init__(self, rt: Runtime, eos: int):
        self.rt, self.eos = rt, eos

    def prefill(self, plan: list[Prefill]) -> Iterator[Prefilled]:
        """Each prefill, in order: prefix-cache hits one by one (an extension each), then runs
        of adjacent slots in one call each. Copies are made right after their source fills."""
        for p in plan:
            if p.reused:
                logits = self.rt.extend(p.slot, p.reused, p.window[p.reused:])[-1:]
                yield self._copied([p], logits, {})
        fresh = {p.slot: p for p in plan if not p.reused}
        for first, run in SlotTable.runs(list(fresh)):
            ps = [fresh[s] for s in run]
            echo = [i for i, p in enumerate(ps) if p.echo is not None]
            logits = self.rt.prefill(first, [p.window for p in ps], self.eos, all_positions=bool(echo))
            full = {}
            if echo:
                full = {ps[i].slot: logits[i, :len(ps[i].window)] for i in echo}
                logits = logits[np.arange(len(ps)), np.array([len(p.window) for p in ps]) - 1]
            yield self._copied(ps, logits, full)

    def _copied(self, ps: list[Prefill], logits: np.ndarray, full: dict) -> Prefilled:
        slots, lengths, rows = [p.slot for p in ps], [len(p.window) for p in ps], list(range(len(ps)))
        for i, p in enumerate(ps):
            for t in p.copies:
                self.rt.copy_prefix(p.slot, t, len(p.window))
                slots.append(t)
                lengths.append(len(p.window))
                rows.append(i)
        return Prefilled(slots, lengths, logits[rows] if len(rows) > len(ps) else logits, full)

    def decode(self, step: Decode) -> np.ndarray:
        logits = self.rt.decode(step.tokens, step.lengths)
        return logits[step.slots]

    def extend(self, step: Extend) -> np.ndarray:
        return self.rt.extend(step.slot, step.cached, step.fed)

    def warmup(self) -> None:
        """Prefill and decode at batch 1 and 2 (both sessions), so the first request pays no setup."""
        for n in sorted({1, min(2, self.rt.slots)}):
            self.rt.prefill(0, [[self.eos] * 4] * n)
            self.rt.decode(np.full(n, self.eos), np.full(n, 4))
