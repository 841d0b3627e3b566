"""The sampler: a step's logits -> one token per row, with the logprobs the rows asked for.

    sampler = Sampler(slots=32, vocab=V, eos=0)
    sampler.admit(slot, req)                               # a request takes the slot
    tokens, logprobs = sampler.sample(slots, reqs, logits)  # (N, V) raw logits -> (N,), [list | None] * N
    req.grammar_step                                        # set for a row with a grammar that asked for its trace
    sampler.rewind(req, start, kept)                        # a draft sampled at once: keep `kept` draws
    req.prompt_lp = prompt_logprobs(ids, logits[:len(ids)], k)   # echo: the prompt's own, at joining

It is the loop's one call per step over the modules that hold the rules: penalties.py
(per-slot counts, logit_bias, min_tokens: the state this class owns), grammar.py (structured
output's allowed tokens, for the rows whose request has a grammar) and sampling.py (how a
row draws: temperature, top-k, top-p, each request's own counter-based random stream). Logprobs describe the model's
own distribution, so they are computed from the raw logits, before penalties; off costs
nothing, on is one vectorised pass over the rows that asked. So does a grammar's trace
(`grammar_trace`: what the model wanted before the mask, `Grammars.trace`), left on the
request as `grammar_step` for the output processor to send with the token.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.logprobs import token_logprobs
from serving.engine.grammar import Grammars
from serving.engine.penalties import Penalties
from serving.engine.requests import Request, TokenLogprob
from serving.engine.sampling import sample_batch


class Sampler:
    def __init__(self, slots: int, vocab: int, eos: int, grammars: Grammars | None = None):
        self.penalties = Penalties(slots, vocab, eos)
        self.grammars = grammars

    def admit(self, slot: int, r: Request) -> None:
        self.penalties.admit(slot, r.prompt_ids, r.params)

    def sample(self, slots: Sequence[int], reqs: Sequence[Request],
               logits: np.ndarray) -> tuple[np.ndarray, list[list[TokenLogprob] | None]]:
        """Penalties, then the grammar's mask for the rows that have one, then one draw per row
        from its request's random stream; the draws are counted for the next step's penalties."""
        adjusted = self.penalties.apply(logits, slots, reqs)
        allowed = self.grammars.masks(reqs) if self.grammars else None   # None when no row asked
        if allowed is not None:
            adjusted = Grammars.reachable(adjusted, logits, allowed)
        tokens = sample_batch(adjusted, [r.params for r in reqs], [r.rng for r in reqs], allowed)
        self.penalties.record(slots, tokens)
        if allowed is not None:
            traced = [i for i, r in enumerate(reqs) if allowed[i] is not None and r.params.grammar_trace]
            if traced:   # the output processor sends each with its token (Event.grammar_trace)
                steps = Grammars.trace(logits[traced], [allowed[i] for i in traced], tokens[traced])
                for i, step in zip(traced, steps):
                    reqs[i].grammar_step = step
        return tokens, logprobs_of(reqs, logits, tokens)

    @staticmethod
    def rewind(r: Request, start: int, kept: int) -> None:
        """After sampling a draft's positions in one call (one draw each, from draw `start`):
        keep the draws of the first `kept` positions only, as if each had been its own step
        (greedy rows draw nothing)."""
        r.rng.count = start + (kept if r.params.temperature > 0 else 0)


def logprobs_of(reqs: Sequence[Request], logits: np.ndarray, tokens: np.ndarray) -> list[list[TokenLogprob] | None]:
    """Each row's chosen token's logprob and top alternatives, for the rows that asked (else None)."""
    want = [i for i, r in enumerate(reqs) if r.params.logprobs is not None]
    out: list[list[TokenLogprob] | None] = [None] * len(reqs)
    if want:
        k = max(reqs[i].params.logprobs for i in want)
        lp, top, top_lp = token_logprobs(logits[want], tokens[want], k)
        for j, i in enumerate(want):
            kk = reqs[i].params.logprobs
            out[i] = [TokenLogprob(int(tokens[i]), float(lp[j]),
                                   list(zip(top[j, :kk].tolist(), top_lp[j, :kk].tolist())))]
    return out


def prompt_logprobs(ids: Sequence[int], logits: np.ndarray, k: int) -> list[TokenLogprob]:
    """The prompt's tokens after the first: each one's logprob (the raw logits of the position
    before it, `logits` (len(ids), V) from a prefill of every position) and the top k there."""
    lp, top, top_lp = token_logprobs(logits[: len(ids) - 1], np.asarray(ids[1:], np.int64), k)   # int64 even when empty
    return [TokenLogprob(t, float(v), list(zip(a.tolist(), b.tolist())))
            for t, v, a, b in zip(ids[1:], lp, top, top_lp)]
