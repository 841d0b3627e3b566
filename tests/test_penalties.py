"""Penalties, logit_bias, min_tokens, n, echo and the KV-cache copy: each against a plain
reference, then on the trained tiny model through a real server (both APIs)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from core.artifact import load_artifact
from serving.engine.penalties import Penalties
from serving.grpc.proto import pb
from serving.engine.runtime import Runtime
from serving.engine.sampling import SamplingParams
from tests.serving_fixtures import cached_artifact
from tests.serving_live import LiveServer

V, EOS = 40, 7


def reference(logits, p: SamplingParams, prompt, generated):
    """One row, written out plainly: repetition, then frequency/presence, bias, min_tokens."""
    x = logits.astype(np.float64).copy()
    counts = np.bincount(np.asarray(generated, int), minlength=V)
    for t in set(prompt) | set(generated):
        x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
    x -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    for t, b in p.logit_bias:
        x[t] += -np.inf if b <= -100 else b
    if len(generated) < p.min_tokens:
        x[EOS] = -np.inf
    return x


@dataclass
class Row:   # what Penalties.apply reads of a request
    generated: int


def test_penalties_match_a_row_by_row_reference():
    rng = np.random.default_rng(0)
    params = [SamplingParams(presence_penalty=0.7, frequency_penalty=0.4),
              SamplingParams(),                                              # asks for nothing
              SamplingParams(repetition_penalty=1.3, logit_bias=((3, 5.0), (4, -100.0))),
              SamplingParams(min_tokens=4, frequency_penalty=-1.0, repetition_penalty=0.8)]
    pen, slots = Penalties(6, V, EOS), [4, 0, 2, 5]
    prompts = [rng.integers(0, V, 5).tolist() for _ in params]
    for s, prompt, p in zip(slots, prompts, params):
        pen.admit(s, prompt, p)
    generated = [[] for _ in params]
    for _ in range(6):
        logits = rng.normal(0, 3, (len(params), V)).astype(np.float32)
        before = logits.copy()
        out = pen.apply(logits, slots, [Row(len(g)) for g in generated])
        assert (logits == before).all()                                       # the raw logits stay raw
        for i, p in enumerate(params):
            np.testing.assert_allclose(out[i], reference(logits[i], p, prompts[i], generated[i]), rtol=1e-5, atol=1e-5)
        tokens = rng.integers(0, V, len(params))
        pen.record(slots, tokens)
        for g, t in zip(generated, tokens.tolist()):
            g.append(t)
    plain = np.zeros((1, V), np.float32)
    assert pen.apply(plain, [0], [Row(0)]) is plain                           # nothing asked: no copy
    pen.admit(4, [1], SamplingParams(presence_penalty=1.0))                   # a new request: counts reset
    assert pen.counts[4].sum() == 0 and pen.prompt[4].sum() == 1


def test_a_tiny_repetition_penalty_leaves_the_logits_finite():
    """1e-39 divides a positive logit past float32's range; +inf rows made the sampler's
    softmax NaN (the abuse fuzz's random values found it)."""
    from serving.engine.sampling import make_rng, sample_batch
    pen = Penalties(1, V, EOS)
    p = SamplingParams(repetition_penalty=1e-39, seed=0)
    pen.admit(0, list(range(V)), p)                       # every token seen
    logits = np.linspace(-3, 3, V, dtype=np.float32)[None]
    out = pen.apply(logits, [0], [Row(0)])
    assert np.isfinite(out).all()
    token = int(sample_batch(out, [p], [make_rng(p.seed)])[0])
    assert logits[0, token] > 0                            # one of the tokens the division raised


def test_copying_a_slots_prefix_equals_prefilling_it(tiny_run, tmp_path_factory):
    art = load_artifact(cached_artifact(tiny_run, tmp_path_factory))
    rt = Runtime(art, device="cpu", threads=1, slots=4)
    prompt = [5, 9, 12, 3, 17, 20]
    first = rt.prefill(0, [prompt])
    rt.copy_prefix(0, 3, len(prompt))
    direct = Runtime(art, device="cpu", threads=1, slots=4)
    direct.prefill(3, [prompt])
    k, v = rt.cache.host(1)
    dk, dv = direct.cache.host(1)
    np.testing.assert_array_equal(k[3, :, :6], dk[3, :, :6])
    np.testing.assert_array_equal(v[3, :, :6], dv[3, :, :6])
    lengths = np.array([6, 0, 0, 6])
    steps = rt.decode(np.array([8, 0, 0, 8]), lengths)                        # both rows go on alike
    np.testing.assert_allclose(steps[0], steps[3], atol=1e-6)
    np.testing.assert_allclose(steps[3], direct.decode(np.array([0, 0, 0, 8]), lengths)[3], atol=1e-5)
    assert first.shape == (1, art.config.vocab_size) and rt.can_copy
    with pytest.raises(ValueError):
        rt.copy_prefix(0, 4, 2)


# ---- on the trained tiny model, through a real server ------------------------------------------

@pytest.fixture(scope="module")
def live(art):
    s = LiveServer(art, max_new_tokens=400, max_batch=16)
    yield s
    s.close()


def repeated_share(ids: list[int], n: int = 3) -> float:
    """The share of n-grams that already occurred earlier in the text."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams)


def test_frequency_penalty_lowers_repetition(live):
    shares = []
    for f in (0.0, 0.5, 1.0, 2.0):
        _, ids, _ = live.generate(prompt="Shall I", max_tokens=200, temperature=0, ignore_eos=True, frequency_penalty=f)
        shares.append(repeated_share(ids))
    print("repeated 3-gram share by frequency_penalty 0, 0.5, 1, 2:", shares)
    assert shares[0] > 0.5 and shares[-1] < shares[0] / 2, shares       # greedy loops; the penalty breaks them
    assert all(a >= b for a, b in zip(shares, shares[1:])), shares


def test_logit_bias_bans_and_forces(live):
    tok = live.server.artifact.tokenizer
    e, z = tok.token_to_id("e"), tok.token_to_id("w")
    _, ids, _ = live.generate(prompt="Shall I", max_tokens=300, temperature=1.5, seed=1, ignore_eos=True,
                              logit_bias={e: -100})
    assert e not in ids and len(ids) == 300
    _, ids, _ = live.generate(prompt="Shall I", max_tokens=50, temperature=1.5, seed=1, logit_bias={z: 100})
    assert ids == [z] * 50


def test_min_tokens_holds_off_end_of_text(live, http):
    eos = live.server.card.eos_token_id
    text, ids, last = live.generate(prompt="Shall I", max_tokens=30, seed=2, logit_bias={eos: 100}, min_tokens=5)
    assert (len(ids), last.finish_reason, last.usage.completion_tokens) == (5, "stop", 6)   # then EOS, not sent
    stop = text[1:3]      # would end it at the third token, but stop strings wait for min_tokens too
    r = http.post("/v1/completions", json=dict(prompt="Shall I", max_tokens=30, seed=2, logit_bias={str(eos): 100},
                                               min_tokens=5, stop=[stop])).json()
    assert len(stop) == 2 and r["choices"][0]["text"] == text and r["usage"]["completion_tokens"] == 6


def test_a_seed_gives_the_same_tokens_with_penalties_whatever_shares_the_batch(live):
    def one(i):
        return live.generate(prompt="When I", max_tokens=60, temperature=0.9, seed=100 + i, ignore_eos=True,
                             presence_penalty=0.5, frequency_penalty=0.3 * (i % 3), repetition_penalty=1.2,
                             logit_bias={3 + i: -100, 10: 2.5})[1]
    solo = [one(i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(8)))
    assert together == solo and len({tuple(s) for s in solo}) == 8


def test_n_choices_are_the_seeds_in_turn_on_a_prompt_prefilled_once(live, http):
    want = [live.generate(prompt="When I", max_tokens=20, seed=5 + i, ignore_eos=True)[0] for i in range(3)]
    r = http.post("/v1/completions", json=dict(prompt="When I", max_tokens=20, seed=5, n=3, ignore_eos=True)).json()
    assert [c["text"] for c in sorted(r["choices"], key=lambda c: c["index"])] == want
    assert r["usage"] == {"prompt_tokens": 6, "completion_tokens": 60, "total_tokens": 66,
                          "prompt_tokens_details": {"cached_tokens": 0}}
    got = live.stub.Complete(pb.GenerateRequest(prompt="When I", max_tokens=20, seed=5, n=3, ignore_eos=True))
    assert [c.text for c in got.choices] == want and got.text == want[0]
    streamed = {}
    for msg in live.stub.Generate(pb.GenerateRequest(prompt="When I", max_tokens=20, seed=5, n=3, ignore_eos=True)):
        streamed[msg.index] = streamed.get(msg.index, "") + msg.text
    assert [streamed[i] for i in range(3)] == want


def test_echo_logprobs_match_pytorch(live, http, tiny_run):
    from training.checkpoint import load_run

    prompt = "Shall I compare thee"
    r = http.post("/v1/completions", json=dict(prompt=prompt, max_tokens=2, echo=True, logprobs=2, temperature=0))
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    n = len(prompt)
    assert choice["text"].startswith(prompt) and "".join(lp["tokens"][:n]) == prompt
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"] == list(range(n + 2))
    model, _, tok = load_run(tiny_run)
    ids = tok.encode(prompt, add_special_tokens=False).ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0][0].double(), -1)
    want = [logp[i, ids[i + 1]].item() for i in range(n - 1)]
    np.testing.assert_allclose(lp["token_logprobs"][1:n], want, atol=2e-4)
    best = {tok.id_to_token(int(logp[3].argmax()))}
    assert best <= set(lp["top_logprobs"][4])
    msgs = list(live.stub.Generate(pb.GenerateRequest(prompt=prompt, max_tokens=2, prompt_logprobs=0, temperature=0)))
    np.testing.assert_allclose([e.logprob for e in msgs[0].prompt_logprobs], want, atol=2e-4)


def test_n_choices_wait_for_slots_together_and_hold_later_requests_back(tiny_run, tmp_path_factory):
    """Two slots, one held by a long request: n=2 waits for both, and a request sent after it
    does not overtake it; everything finishes."""
    s = LiveServer(cached_artifact(tiny_run, tmp_path_factory), max_new_tokens=400, max_batch=2)
    try:
        long = s.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=300, ignore_eos=True), timeout=60)
        next(long)
        pair = s.stub.Complete.future(pb.GenerateRequest(prompt="When I", n=2, max_tokens=5, ignore_eos=True))
        assert s.wait_for(lambda: s.metric("shelley_requests_waiting") == 1)
        later = s.stub.Complete.future(pb.GenerateRequest(prompt="hi", max_tokens=3, ignore_eos=True))
        assert s.wait_for(lambda: s.metric("shelley_requests_waiting") == 2)
        assert not pair.done() and not later.done()          # one slot free: neither may start
        LiveServer.drain_quietly(long)
        got = pair.result(30)
        assert [len(c.token_ids) for c in got.choices] == [5, 5] and later.result(30).usage.completion_tokens == 3
    finally:
        s.close()
