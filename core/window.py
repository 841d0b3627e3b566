"""How generation runs past the context: one sliding-window rule for every runtime.

    keep = window_keep(context)                  # tokens kept when the cache is full
    window = refill(tokens, cached, context)     # None: feed tokens[-1]; else re-prefill these
    for t in generate_ids(prefill, decode, choose, prompt, context, max_new): ...

A model attends to at most `context` tokens. When the cache is full and another token must
be fed, the newest `window_keep` tokens are prefilled again from position 0 and generation
goes on, so a completion can be longer than the context. PyTorch sampling
(training/generate.py), the parity checks (export/verify.py) and the server's batched
engine (serving/engine/scheduler.py) all decide with `refill`; the first two share `generate_ids`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any


def window_keep(context: int) -> int:
    """Tokens kept when generation fills the context: the newest three quarters."""
    return max(1, (3 * context) // 4)


def refill(tokens: Sequence[int], cached: int, context: int) -> list[int] | None:
    """`tokens` ends with the token to feed next; the cache holds `cached` tokens. None when
    it has room (decode one token), else the window to prefill again in its place."""
    return list(tokens[-window_keep(context):]) if cached >= context else None


def generate_ids(prefill: Callable[[list[int]], Any], decode: Callable[[int, int], Any],
                 choose: Callable[[Any], int], prompt: Sequence[int], context: int,
                 max_new: int) -> Iterator[int]:
    """One sequence, token by token: `prefill(tokens)` and `decode(token, position)` return
    the next token's logits (whatever `choose` reads); `choose(logits)` picks the token.
    Stop iterating to stop: nothing is fed after the last token yielded."""
    tokens = list(prompt)[-context:]
    logits, cached = prefill(tokens), len(tokens)
    for _ in range(max_new):
        token = choose(logits)
        yield token
        tokens.append(token)
        window = refill(tokens, cached, context)
        if window is None:
            logits, cached = decode(token, cached), cached + 1
        else:
            tokens = window
            logits, cached = prefill(tokens), len(tokens)
