"""Token logprobs: the numpy function, token texts, event merging, and both front doors' view."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from core.logprobs import token_logprobs
from core.tokens import TokenTable
from serving.engine.core import Event, TokenLogprob
from serving.http.logprobs import openai_logprobs
from serving.grpc.proto import pb

PROMPT = "ROMEO:\nBut, soft!"


def reference(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    return x - x.max(1, keepdims=True) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_token_logprobs_match_a_float64_log_softmax(scale):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((7, 300)) * scale).astype(np.float32)
    chosen = rng.integers(0, 300, 7)
    lp, top_ids, top_lp = token_logprobs(logits, chosen, 5)
    ref = reference(logits)
    assert lp.shape == (7,) and top_ids.shape == top_lp.shape == (7, 5)
    assert np.all(np.isfinite(lp)) and np.all(np.isfinite(top_lp))
    np.testing.assert_allclose(lp, ref[np.arange(7), chosen], rtol=1e-5, atol=1e-4)
    want = np.argsort(-ref, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(top_ids, want)                 # most likely first
    np.testing.assert_allclose(top_lp, np.take_along_axis(ref, want, 1), rtol=1e-5, atol=1e-4)
    assert np.all(np.diff(top_lp, axis=1) <= 0)
    np.testing.assert_allclose(np.exp(ref).sum(1), 1.0)


def test_token_logprobs_k0_gives_only_the_chosen_token():
    logits = np.array([[0.0, 1.0, 2.0], [5.0, 0.0, 0.0]], np.float32)
    lp, top_ids, top_lp = token_logprobs(logits, np.array([2, 1]), 0)
    np.testing.assert_allclose(lp, reference(logits)[[0, 1], [2, 1]], rtol=1e-6)
    assert top_ids.shape == top_lp.shape == (2, 0)


def test_token_texts_spell_lone_bytes_as_openai_does(art):
    from core.artifact import load_artifact
    from training.tokenizer import build_tokenizer

    tok = load_artifact(art).tokenizer
    texts = TokenTable(tok)
    ids = tok.encode("aé", add_special_tokens=False).ids
    assert [texts.text(i) for i in ids] == ["a", "bytes:\\xc3", "bytes:\\xa9"]
    bpe = build_tokenizer("bpe", ["héllo wörld " * 50], vocab_size=300)
    lone = bpe.token_to_id("Ã")                              # byte 0xC3 in GPT-2's byte alphabet
    assert TokenTable(bpe).text(lone) == "bytes:\\xc3"
    assert TokenTable(bpe).text(bpe.token_to_id("h")) == "h"


def test_openai_logprobs_object_and_offsets(art):
    from core.artifact import load_artifact

    tok = load_artifact(art).tokenizer
    texts = TokenTable(tok)
    ids = [tok.token_to_id(c) for c in "ab\n"]
    entries = [TokenLogprob(i, -0.5 * n, [(ids[0], -0.1), (ids[1], -0.2)]) for n, i in enumerate(ids)]
    obj = openai_logprobs(entries, texts, offset=4)
    assert obj == {"tokens": ["a", "b", "\n"], "token_logprobs": [0.0, -0.5, -1.0],
                   "top_logprobs": [{"a": -0.1, "b": -0.2}] * 3, "text_offset": [4, 5, 6]}


def test_events_merge_logprobs_when_the_client_falls_behind():
    from serving.logs import Access
    from serving.server import Server

    class FakeRequest:
        prompt_tokens, cancelled = 3, False

        def __init__(self):
            self.sink = asyncio.Queue()
            self.choices = [self]

        def cancel(self):
            self.cancelled = True

    def lp(i):
        return [TokenLogprob(i, -float(i), [(i, -float(i))])]

    async def run():
        req = FakeRequest()
        for i in range(3):
            req.sink.put_nowait(Event(str(i), [i], logprobs=lp(i)))
        req.sink.put_nowait(Event("", [], "stop", 3, 4, logprobs=[]))   # the end-of-text token: no entry
        access = Access("id", "grpc", "Generate")
        server = SimpleNamespace(config=SimpleNamespace(message_rate=0), in_flight=1)   # pacing off
        got = [ev async for ev in Server.events(server, req, access)]
        return got, access, req

    got, access, req = asyncio.run(run())
    assert len(got) == 1                      # the four waiting events merged into one
    assert (got[0].text, got[0].token_ids, got[0].logprobs) == ("012", [0, 1, 2], lp(0) + lp(1) + lp(2))
    assert (got[0].finish_reason, got[0].prompt_tokens, got[0].completion_tokens) == ("stop", 3, 4)
    assert (access.prompt_tokens, access.completion_tokens, access.finish_reason) == (3, 4, "stop")
    assert req.cancelled                      # leaving always cancels (a no-op once finished)


def test_grpc_logprobs_one_per_token_before_temperature(live):
    msgs = list(live.stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_tokens=30, temperature=0.0,
                                                      logprobs=3, ignore_eos=True), timeout=30))
    entries = [e for m in msgs for e in m.logprobs]
    assert all(len(m.logprobs) == len(m.token_ids) for m in msgs)
    assert [e.token_id for e in entries] == [t for m in msgs for t in m.token_ids] and len(entries) == 30
    for e in entries:
        tops = [t.logprob for t in e.top]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and e.logprob <= 0
        assert (e.top[0].token_id, e.top[0].logprob) == (e.token_id, e.logprob)   # greedy: the argmax
        assert e.token == live.server.artifact.tokens.text(e.token_id)
    # The first token's distribution is the model's, whatever the temperature and top-k
    hot = list(live.stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_tokens=1, temperature=1.7, top_k=2,
                                                     seed=1, logprobs=3), timeout=30))
    first = [m for m in hot if m.logprobs][0].logprobs[0]
    assert [(t.token_id, t.logprob) for t in first.top] == [(t.token_id, t.logprob) for t in entries[0].top]
    # Complete carries the same facts; no logprobs asked = none sent
    done = live.stub.Complete(pb.GenerateRequest(prompt=PROMPT, max_tokens=30, temperature=0.0, logprobs=3,
                                                 ignore_eos=True), timeout=30)
    # the same facts; its prompt was cached by now, so its first step ran as a prompt
    # extension: the same tokens, logprobs equal to float32's last bits
    def facts(es):
        return [(e.token_id, [t.token_id for t in e.top]) for e in es]
    assert facts(done.logprobs) == facts(entries)
    assert [e.logprob for e in done.logprobs] == pytest.approx([e.logprob for e in entries], abs=1e-5)
    plain = live.stub.Complete(pb.GenerateRequest(prompt=PROMPT, max_tokens=5), timeout=30)
    assert len(plain.logprobs) == 0


@pytest.mark.parametrize("k", [-1, 6])
def test_grpc_logprobs_out_of_range_is_invalid_argument(live, k):
    import grpc

    with pytest.raises(grpc.RpcError) as e:
        live.stub.Complete(pb.GenerateRequest(prompt="hi", logprobs=k), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == f"logprobs must be between 0 and 5, got {k}"

