"""The batch's state: which request owns which slot of the KV cache, what the slot is
doing, and how full it is.

    table = SlotTable(32, context=256)
    slots = table.admit([req_a, req_b])     # the lowest free slots, e.g. [0, 1]
    for first, reqs in table.runs(slots):   # adjacent slots prefill in one call
        ...
    n = table.rows                          # decode rows 0..n-1 (the highest owned slot + 1)
    table.started(slot, length)             # its window is in the cache: it generates
    table.fed(slot, token)                  # the token it feeds next; table.advance(slots) after a step
    table.release(slot)                     # the request is done: its slot is free again

A request owns one slot from admission to finish; nothing ever moves between slots.
Taking the lowest free slot keeps the owned slots packed at the front, so a decode step
runs over rows [0, rows) with few free rows inside (their rows are computed and ignored).
`lengths[s]` counts the tokens in slot s's cache; `tokens[s]` is the token it feeds next;
`state[s]` says where its request is (llama.cpp's server names its slots' states the same way).

A free slot keeps what its cache holds (`cached[s]`, the token ids of positions 0.. as its
last request left them), so a new prompt that starts the same way can take that slot and
feed only the rest (`longest_prefix`, `admit_at`): a system prompt, a conversation's earlier
turns, a retry. Admission without such a match still takes the lowest free slot.

A decode step computes every row in [0, rows), free ones too, and each row writes its new
key and value at position `lengths[s]`. So a free slot's length is where its kept cache
ends, not 0: the garbage a free row writes lands just past what it keeps (a kept cache is
at most context - 1 tokens, so that position always exists) and never over it.

One owner: only the methods below write the table (the scheduler, serving/engine/scheduler.py,
is the one caller that changes it; the runner and the loop read it). `state` is what a
decode step reads: it covers the GENERATING slots (`generating()`); a PREFILLING slot waits
for its window to be (re)filled first.
"""
from __future__ import annotations

import enum

import numpy as np


class SlotState(enum.Enum):
    IDLE = "idle"              # free: no request owns it
    PREFILLING = "prefilling"  # its request's prompt (or a slid window) is going into the cache
    GENERATING = "generating"  # decoded one token a step with the batch


class SlotTable:
    def __init__(self, slots: int, context: int):
        self.context = context
        self.owner: list = [None] * slots          # slot -> request, or None when free
        self.state = [SlotState.IDLE] * slots
        self.cached: list[np.ndarray | None] = [None] * slots   # a free slot's cache, as token ids
        self.lengths = np.zeros(slots, np.int64)  # tokens in each slot's cache
        self.tokens = np.zeros(slots, np.int64)   # next token to feed each slot
        self.running = 0                           # owned slots

    @property
    def free(self) -> int:
        return len(self.owner) - self.running

    @property
    def rows(self) -> int:
        """Rows a decode step covers: up to the highest owned slot."""
        for s in range(len(self.owner) - 1, -1, -1):
            if self.owner[s] is not None:
                return s + 1
        return 0

    def active(self) -> list[tuple[int, object]]:
        """(slot, request) for every owned slot, in slot order."""
        return [(s, r) for s, r in enumerate(self.owner) if r is not None]

    def admit(self, requests: list) -> list[int]:
        """Give each request the lowest free slot; returns the slots, in request order."""
        free = [s for s, r in enumerate(self.owner) if r is None]
        if len(requests) > len(free):
            raise ValueError(f"{len(requests)} requests for {len(free)} free slots")
        for s, r in zip(free, requests):
            self.admit_at(r, s)
        return free[: len(requests)]

    def admit_at(self, request, slot: int) -> None:
        """Give the request this free slot (its cache's old contents count for nothing now)."""
        if self.owner[slot] is not None:
            raise ValueError(f"slot {slot} is taken")
        self.owner[slot], self.state[slot], self.cached[slot] = request, SlotState.PREFILLING, None
        self.running += 1
        request.slot = slot
        self.lengths[slot] = 0

    def generating(self) -> list[int]:
        """The slots a decode step samples: owned and GENERATING, in slot order."""
        return [s for s, r in enumerate(self.owner) if r is not None and self.state[s] is SlotState.GENERATING]

    def started(self, slot: int, length: int) -> None:
        """Slot `slot`'s cache now holds `length` tokens of its request's window (from position 0)."""
        self.lengths[slot], self.state[slot] = length, SlotState.GENERATING

    def refilling(self, slot: int) -> None:
        """Its cache is full: it waits for its newest tokens to be prefilled again."""
        self.state[slot] = SlotState.PREFILLING

    def fed(self, slot: int, token: int) -> None:
        """The token slot `slot` feeds at its next step."""
        self.tokens[slot] = token

    def advance(self, slots, by: int = 1) -> None:
        """The slots' caches each took `by` more tokens (a decode step: one)."""
        self.lengths[slots] += by

    def set_length(self, slot: int, length: int) -> None:
        """The slot's cache holds `length` tokens (a verified draft: what was kept of it)."""
        self.lengths[slot] = length

    def release(self, slot: int, cached=None) -> None:
        """Free the slot; `cached`: the token ids its cache now holds, kept for reuse."""
        if self.owner[slot] is not None:
            self.running -= 1
        self.owner[slot] = None
        self.state[slot] = SlotState.IDLE
        keep = None if cached is None else np.asarray(cached, np.int64)[: self.context - 1]
        self.cached[slot] = keep if keep is not None and len(keep) else None
        self.lengths[slot] = 0 if self.cached[slot] is None else len(keep)   # free rows write here
        self.tokens[slot] = 0

    def longest_prefix(self, ids) -> tuple[int, int]:
        """(free slot, tokens) whose cache starts with the longest run of `ids`' first tokens;
        (-1, 0) when none starts with ids[0]. Ties go to the lowest slot."""
        best, ids = (-1, 0), np.asarray(ids, np.int64)
        for s, cached in enumerate(self.cached):
            if cached is None or self.owner[s] is not None or cached[0] != ids[0]:
                continue
            m = min(len(cached), len(ids))
            same = cached[:m] == ids[:m]
            n = m if same.all() else int(same.argmin())
            if n > best[1]:
                best = (s, n)
        return best

    @staticmethod
    def runs(slots: list[int]) -> list[tuple[int, list[int]]]:
        """Group slots into runs of adjacent ones: [(first slot, [slots...]), ...]."""
        out: list[tuple[int, list[int]]] = []
        for s in sorted(slots):
            if out and out[-1][1][-1] == s - 1:
                out[-1][1].append(s)
            else:
                out.append((s, [s]))
        return out
