"""The output processor alone (serving/engine/output.py): tokens in, events out, the end
decided through check_stop, one publish per flush. Requests use the tiny model's real
tokenizer table."""
from __future__ import annotations

import pytest

from core.artifact import load_artifact
from serving.engine.output import Output
from serving.engine.requests import Finish, Request, TokenLogprob
from serving.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def tiny(art):
    """The tiny model's artifact, loaded: its eos and its real tokenizer table."""
    return load_artifact(art)


def request(tiny, **params) -> Request:
    return Request([tiny.config.eos_token_id], SamplingParams(**{"max_tokens": 20, **params}), tiny.tokens.stream())


def ids(tiny, text: str) -> list[int]:
    return tiny.tokenizer.encode(text, add_special_tokens=False).ids


def test_tokens_become_events_and_one_flush_publishes_the_step(tiny):
    published = []
    out = Output(tiny.config.eos_token_id, published.append)
    a, b = request(tiny), request(tiny)
    a.prompt_lp = lp = [TokenLogprob(1, -0.5, [])]
    toks = ids(tiny, "hi")
    assert not out.token(a, toks[0], None) and not out.token(b, toks[0], None)
    assert published == []
    out.flush()
    out.flush()                                                   # nothing new: no publish
    assert len(published) == 1 and [r for r, _ in published[0]] == [a, b]
    ev = published[0][0][1]
    assert ev.token_ids == toks[:1] and ev.prompt_logprobs == lp and a.prompt_lp is None
    assert a.generated == 1 and a.ids[-1] == toks[0]


def test_a_stop_string_ends_the_request_without_its_text(tiny):
    published = []
    out = Output(tiny.config.eos_token_id, published.append)
    r = request(tiny, stop=("lo",))
    tokens = ids(tiny, "hello")
    ended = [out.token(r, t, None) for t in tokens]
    assert ended == [False] * (len(tokens) - 1) + [True] and r.done
    out.flush()
    events = [ev for _, ev in published[0]]
    assert "".join(ev.text for ev in events) == "hel" and events[-1].finish_reason == "stop"
    assert events[-1].completion_tokens == len(tokens)


def test_end_of_text_is_not_sent_and_a_request_ends_once(tiny):
    published = []
    eos = tiny.config.eos_token_id
    out = Output(eos, published.append)
    r = request(tiny)
    assert out.token(r, eos, None)
    out.end(r, Finish.CANCELLED)                                  # already ended: ignored
    out.flush()
    (_, ev), = published[0]
    assert ev.token_ids == [] and ev.finish_reason == "stop" and ev.completion_tokens == 1


def test_max_tokens_ends_with_length_and_cancel_ends_without_a_token(tiny):
    published = []
    out = Output(tiny.config.eos_token_id, published.append)
    r, gone = request(tiny, max_tokens=2), request(tiny)
    t = ids(tiny, "a")[0]
    assert [out.token(r, t, None), out.token(r, t, None)] == [False, True]
    out.end(gone, Finish.CANCELLED)
    out.flush()
    finals = [(ev.finish_reason, ev.token_ids) for _, ev in published[0] if ev.finish_reason]
    assert finals == [("length", [t]), ("cancelled", [])]
