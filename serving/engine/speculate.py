"""Speculative decoding for a lone stream: drafts from the request's own text.

    drafts = NgramDrafter(prompt_ids)    # prompt lookup: no second model
    drafts.append(token)                 # every token the request adds
    draft = drafts.propose(4)            # what followed the newest n-gram the last time it occurred

When a request runs alone, a decode step's cost is reading the weights, not arithmetic, so
feeding it several tokens in one call costs little more than one. The engine feeds the
pending token plus a draft in one extension call (serving/engine/runtime.py `Runtime.extend`),
then lets the request's own sampler pick each position's token from the model's logits,
with the same random draw it would use without a draft, keeping drafted tokens only while
they equal what was picked. So the output is the one decoding one token a step gives, token
for token, seed for seed; what changes is how many graph calls it takes. Rejected draft
tokens stay in the in-place cache past the row's length and are overwritten: rejecting is
a shorter length, nothing is copied.

Text repeats itself (names, phrases, and a small model's loops), which is what prompt
lookup feeds on; `Acceptance` turns drafting off for a request whose drafts keep failing,
so a stream that never repeats pays almost nothing.
"""
from __future__ import annotations

from collections.abc import Iterable


class NgramDrafter:
    """The request's tokens, indexed by their n-grams (n = max_n down to min_n)."""

    def __init__(self, ids: Iterable[int] = (), max_n: int = 4, min_n: int = 2):
        self.max_n, self.min_n = max_n, min_n
        self.ids: list[int] = []
        self.after: dict[tuple[int, ...], int] = {}   # n-gram -> where its latest continuation starts
        for t in ids:
            self.append(t)

    def sync(self, ids: list[int]) -> None:
        """Take in the tokens `ids` has gained since the last call (ids only ever grows)."""
        for t in ids[len(self.ids):]:
            self.append(t)

    def append(self, token: int) -> None:
        ids = self.ids
        ids.append(token)
        end = len(ids) - 1          # the n-grams ending just before `token` now have a continuation
        for n in range(self.min_n, self.max_n + 1):
            if end - n >= 0:
                self.after[tuple(ids[end - n:end])] = end

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest recent repeat of the newest n-gram."""
        ids = self.ids
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(ids) >= n:
                start = self.after.get(tuple(ids[-n:]))
                if start is not None:
                    return ids[start:start + k]
        return []


class Acceptance:
    """How often a request's drafts pay: drafting pauses when they mostly fail, and is tried
    again now and then (text that starts repeating later gets drafts again)."""

    def __init__(self, floor: float = 0.25, retry_every: int = 32):
        self.rate, self.floor, self.retry_every, self.skipped = 1.0, floor, retry_every, 0

    def wanted(self) -> bool:
        if self.rate >= self.floor:
            return True
        self.skipped += 1
        if self.skipped >= self.retry_every:
            self.skipped, self.rate = 0, self.floor   # one more chance
            return True
        return False

    def record(self, drafted: int, accepted: int) -> None:
        self.rate = 0.7 * self.rate + 0.3 * (accepted / drafted)
