"""The loop's sampling step alone (serving/engine/sampler.py): penalties only for the rows
that asked, one draw per row, logprobs of the raw logits for the rows that asked."""
from __future__ import annotations

import numpy as np

from core.logprobs import log_softmax
from core.tokens import TextStream
from serving.engine.requests import Request
from serving.engine.sampler import Sampler, prompt_logprobs
from serving.engine.sampling import SamplingParams

V = 16


def request(**params) -> Request:
    return Request([3, 4], SamplingParams(**{"max_tokens": 10, **params}), TextStream([b"x"] * V))


def test_each_row_gets_its_own_rules():
    sampler = Sampler(slots=3, vocab=V, eos=0)
    plain, banned, lp = request(temperature=0.0), request(temperature=0.0, logit_bias=((5, -100.0),)), \
        request(temperature=0.0, logprobs=2)
    for slot, r in enumerate((plain, banned, lp)):
        sampler.admit(slot, r)
    logits = np.zeros((3, V), np.float32)
    logits[:, 5] = 4.0
    logits[:, 6] = 2.0
    tokens, logprobs = sampler.sample([0, 1, 2], [plain, banned, lp], logits)
    assert tokens.tolist() == [5, 6, 5]                            # the ban touched its own row only
    assert logprobs[0] is None and logprobs[1] is None
    (chosen,) = logprobs[2]
    ref = log_softmax(logits[2:3])[0]
    assert chosen.token_id == 5 and abs(chosen.logprob - ref[5]) < 1e-9
    assert [t for t, _ in chosen.top] == [5, 6]
    assert sampler.penalties.counts[1, 6] == 1 and sampler.penalties.counts[0].sum() == 0   # counted where asked


def test_logprobs_are_of_the_raw_logits_not_the_penalised_ones():
    sampler = Sampler(slots=1, vocab=V, eos=0)
    r = request(temperature=0.0, logprobs=0, logit_bias=((5, -100.0),))
    sampler.admit(0, r)
    logits = np.linspace(0, 1, V, dtype=np.float32)[None]
    tokens, logprobs = sampler.sample([0], [r], logits)
    assert tokens[0] == V - 1 and abs(logprobs[0][0].logprob - log_softmax(logits)[0, V - 1]) < 1e-9


def test_prompt_logprobs_score_each_token_after_the_first():
    ids = [2, 7, 9]
    logits = np.random.default_rng(0).normal(size=(3, V)).astype(np.float32)
    got = prompt_logprobs(ids, logits, k=1)
    ref = log_softmax(logits)
    assert [t.token_id for t in got] == [7, 9]
    np.testing.assert_allclose([t.logprob for t in got], [ref[0, 7], ref[1, 9]], atol=1e-9)
    assert [t.top[0][0] for t in got] == ref[:2].argmax(1).tolist()


def test_a_one_token_prompt_has_no_prompt_logprobs():
    assert prompt_logprobs([2], np.zeros((1, V), np.float32), k=2) == []


def test_grammar_trace_reports_the_unmasked_choice():
    """Grammars.trace (structured output's report): the model's top token before the mask,
    whether the mask allowed it, how many tokens and how much probability the mask allowed."""
    from serving.engine.grammar import Grammars

    logits = np.random.default_rng(1).normal(size=(2, V)).astype(np.float32)
    masks = [np.zeros(V, bool), np.ones(V, bool)]
    masks[0][[3, 9]] = True
    tokens = np.array([9, int(logits[1].argmax())])
    a, b = Grammars.trace(logits, masks, tokens)
    ref = log_softmax(logits)
    assert a.wanted == ref[0].argmax() and a.wanted_allowed == (a.wanted in (3, 9))
    assert a.token_id == 9 and abs(a.logprob - ref[0, 9]) < 1e-9 and a.allowed == 2
    assert abs(a.allowed_logprob - np.log(np.exp(ref[0, [3, 9]]).sum())) < 1e-9
    assert [i for i, _ in a.allowed_top] == sorted([3, 9], key=lambda i: -ref[0, i])   # only allowed ones, best first
    assert len(b.allowed_top) == 5 and b.allowed_top[0] == (b.wanted, b.wanted_logprob)
    assert b.wanted == b.token_id and b.wanted_allowed and b.allowed == V and abs(b.allowed_logprob) < 1e-9
