"""Speculative decoding for a lone stream: drafts from the request's own n-grams, verified in
one call; the output must be the one plain decoding gives, token for token, seed for seed."""
from __future__ import annotations

import pytest

from serving.grpc.proto import pb
from serving.engine.speculate import Acceptance, NgramDrafter
from tests.serving_fixtures import cached_artifact
from tests.serving_live import LiveServer


def test_drafts_are_what_followed_the_newest_ngram_last_time():
    d = NgramDrafter([1, 2, 3, 4, 5, 1, 2])
    assert d.propose(4) == [3, 4, 5, 1]          # "1 2" was followed by 3 4 5 1
    d.append(3)
    assert d.propose(2) == [4, 5]                # "1 2 3": the longest n-gram wins
    d.sync([1, 2, 3, 4, 5, 1, 2, 3, 9])           # ids only grow: take in what is new
    assert d.ids[-1] == 9 and d.propose(3) == []  # "3 9" never occurred before
    assert NgramDrafter([7, 8, 9]).propose(3) == [] and d.propose(0) == []


def test_drafting_pauses_when_drafts_fail_and_is_tried_again():
    a = Acceptance(floor=0.25, retry_every=4)
    for _ in range(6):
        a.record(4, 0)
    skipped = [a.wanted() for _ in range(4)]
    assert skipped == [False, False, False, True]     # a retry after retry_every skipped steps
    a.record(4, 4)
    assert a.wanted()


@pytest.fixture(scope="module")
def servers(tiny_run, tmp_path_factory):
    art = cached_artifact(tiny_run, tmp_path_factory)
    on, off = LiveServer(art, max_new_tokens=400), LiveServer(art, max_new_tokens=400, speculate=0)
    yield on, off
    on.close()
    off.close()


# Repetitive prompts give the drafter something to find; 120 tokens run past the tiny
# model's 32-token context, so drafts meet the window's slide too.
PROMPTS = ["so so so so so so so so so", "the the the the the", "ROMEO:\nO Romeo, Romeo! Romeo"]


@pytest.mark.parametrize("sampling,accepts", [
    (dict(temperature=0.0), True), (dict(temperature=0.3, seed=3), True),       # drafts match often
    (dict(temperature=0.9, seed=11), False), (dict(temperature=1.2, top_k=8, top_p=0.9, seed=5), False)],
    ids=["greedy", "seeded-cool", "seeded", "top-k-top-p"])
def test_speculation_never_changes_the_tokens(servers, sampling, accepts):
    on, off = servers
    drafted0, accepted0 = (on.metric(f"shelley_spec_decode_{k}_tokens_total") for k in ("draft", "accepted"))
    for prompt in PROMPTS:
        want = off.generate(prompt=prompt, max_tokens=120, ignore_eos=True, **sampling)[1]
        got = on.generate(prompt=prompt, max_tokens=120, ignore_eos=True, **sampling)[1]
        assert got == want and len(got) == 120
    drafted = on.metric("shelley_spec_decode_draft_tokens_total") - drafted0
    accepted = on.metric("shelley_spec_decode_accepted_tokens_total") - accepted0
    assert drafted > 0 and 0 <= accepted <= drafted          # it did speculate
    assert accepted > 0 or not accepts                       # and, where text repeats, drafts paid
    assert off.metric("shelley_spec_decode_draft_tokens_total") == 0


def test_speculation_with_logprobs_and_stop_strings(servers):
    on, off = servers
    fields = dict(prompt=PROMPTS[0], max_tokens=60, temperature=0.0, logprobs=2, stop=["so so so so so so"])
    a, b = (s.stub.Complete(pb.GenerateRequest(**fields), timeout=30)
            for s in (on, off))
    assert (a.text, list(a.token_ids), a.finish_reason) == (b.text, list(b.token_ids), b.finish_reason)
    assert [(e.token_id, round(e.logprob, 4)) for e in a.logprobs] == [(e.token_id, round(e.logprob, 4)) for e in b.logprobs]
