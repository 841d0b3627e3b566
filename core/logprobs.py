"""Log-probabilities of logits, one implementation for export and serving (numpy).

    logp = log_softmax(logits)                         # (N, V) float64
    chosen_lp, top_ids, top_lp = token_logprobs(logits, chosen, k=5)

They describe the model's own distribution (the raw logits, before any sampling setting);
export's int8 check scores held-out text with them, the server reports them per token.
"""
from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (N, V) logits, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_logprobs(logits: np.ndarray, chosen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logprob of `chosen` (N,), the top-k ids (N, k), their logprobs (N, k)), the top ids
    in descending order of logprob."""
    logp = log_softmax(logits)
    rows = np.arange(len(logp))
    chosen_lp = logp[rows, chosen]
    if k <= 0:
        return chosen_lp, np.zeros((len(logp), 0), np.int64), np.zeros((len(logp), 0))
    top = top_k(logp, k)
    return chosen_lp, top, np.take_along_axis(logp, top, 1)


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """The ids of each row's k largest values (N, k), largest first (ties keep id order among
    the k): a partition, then a sort of those k only, never of the row."""
    top = np.argpartition(-values, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(values, top, 1), axis=1, kind="stable"), 1)
