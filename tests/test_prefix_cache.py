"""The prefix cache: a finished request's slot keeps its cache, and a prompt that begins the
same way is fed only the rest. It must never change a request's tokens, never keep a slot
from a request that needs it, and the ids a slot says it holds must be what its cache holds."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from serving.grpc.proto import pb
from serving.engine.slots import SlotTable
from tests.serving_fixtures import cached_artifact
from tests.serving_live import LiveServer


class Req:
    slot = -1


def test_a_free_slot_offers_its_longest_shared_prefix():
    t = SlotTable(4, context=32)
    a, b, c = Req(), Req(), Req()
    t.admit([a, b, c])
    t.release(0, [1, 2, 3, 4, 5])
    t.release(2, [1, 2, 3, 9])
    assert t.longest_prefix([1, 2, 3, 4, 7]) == (0, 4)
    assert t.longest_prefix([1, 2, 3]) == (0, 3)              # ties: the lowest slot
    assert t.longest_prefix([7, 2, 3]) == (-1, 0)
    t.admit_at(Req(), 0)                                       # taken: its cache is no one's now
    assert t.longest_prefix([1, 2, 3, 4]) == (2, 3) and t.cached[0] is None
    with pytest.raises(ValueError):
        t.admit_at(Req(), 1)                                   # slot 1 is still b's


@pytest.fixture(scope="module")
def servers(tiny_run, tmp_path_factory):
    art = cached_artifact(tiny_run, tmp_path_factory)
    on, off = LiveServer(art, max_batch=2, speculate=0), LiveServer(art, max_batch=2, speculate=0, prefix_cache=False)
    yield on, off
    on.close()
    off.close()


def holds_what_prefill_writes(live: LiveServer, slot: int, ids: list[int], spare: int) -> None:
    """Slot `slot`'s first len(ids) positions, every layer's keys and values, equal what
    prefilling `ids` writes (into the `spare` slot of the server's stopped engine)."""
    rt = live.server.engine.rt
    rt.prefill(spare, [ids])
    for layer in range(live.server.artifact.config.n_layer):
        for buf in rt.cache.host(layer):
            np.testing.assert_allclose(buf[slot, :, :len(ids)], buf[spare, :, :len(ids)], atol=1e-5)


PROMPT = "ROMEO:\nBut soft, what light"     # 26 tokens of the tiny model's 32


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.9, seed=4)], ids=["greedy", "seeded"])
def test_a_hit_never_changes_the_tokens(servers, sampling):
    on, off = servers
    hits0 = on.metric("shelley_prefix_cache_hits_total")
    # 4 new tokens: the window never slides, so the slot still begins with the prompt
    want = off.generate(prompt=PROMPT, max_tokens=4, ignore_eos=True, **sampling)[1]
    first = on.generate(prompt=PROMPT, max_tokens=4, ignore_eos=True, **sampling)[1]
    again = on.generate(prompt=PROMPT, max_tokens=4, ignore_eos=True, **sampling)[1]        # a hit
    longer = on.generate(prompt=PROMPT + "?", max_tokens=4, ignore_eos=True, **sampling)[1]  # a hit too
    assert first == again == want
    assert longer == off.generate(prompt=PROMPT + "?", max_tokens=4, ignore_eos=True, **sampling)[1]
    assert on.metric("shelley_prefix_cache_hits_total") - hits0 >= 2 * (len(PROMPT) - 1)
    assert off.metric("shelley_prefix_cache_hits_total") == 0 and off.metric("shelley_prefix_cache_queries_total") > 0


def test_usage_says_how_many_prompt_tokens_the_cache_held(servers):
    """OpenAI's usage.prompt_tokens_details.cached_tokens (Responses: input_tokens_details),
    gRPC's Usage.cached_tokens: the prompt tokens a free slot's cache already held."""
    import httpx

    on, off = servers
    prompt = "JULIET:\nO Romeo, Romeo! wh"         # 26 tokens, in no other test
    body = {"prompt": prompt, "max_tokens": 3, "ignore_eos": True}
    cold = httpx.post(on.base + "/v1/completions", json=body, timeout=30).json()["usage"]
    assert cold["prompt_tokens"] == 26 and cold["prompt_tokens_details"] == {"cached_tokens": 0}
    with httpx.stream("POST", on.base + "/v1/completions", timeout=30,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        warm = [line for line in r.iter_lines() if '"usage": {' in line][-1]
    assert '"prompt_tokens_details": {"cached_tokens": 25}' in warm   # all but the last, fed for its logits
    grpc_usage = on.stub.Complete(pb.GenerateRequest(prompt=prompt, max_tokens=3), timeout=30).usage
    assert (grpc_usage.prompt_tokens, grpc_usage.cached_tokens) == (26, 25)
    chat = {"messages": [{"role": "user", "content": "Good morrow."}], "max_tokens": 2}
    httpx.post(on.base + "/v1/chat/completions", json=chat, timeout=30)
    again = httpx.post(on.base + "/v1/chat/completions", json=chat, timeout=30).json()["usage"]
    assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] - 1 >= 8
    answer = {"input": "Good morrow, cousin.", "max_output_tokens": 2}
    httpx.post(on.base + "/v1/responses", json=answer, timeout=30)
    used = httpx.post(on.base + "/v1/responses", json=answer, timeout=30).json()["usage"]
    assert used["input_tokens_details"]["cached_tokens"] == used["input_tokens"] - 1
    assert httpx.post(off.base + "/v1/completions", json=body, timeout=30).json()["usage"][
        "prompt_tokens_details"]["cached_tokens"] == 0                      # --prefix-cache off: never


def test_a_cached_slot_never_keeps_a_request_waiting(servers):
    on, _ = servers
    on.generate(prompt=PROMPT, max_tokens=3)                    # both slots may now hold caches
    on.generate(prompt="O Juliet, fair Juliet, hark", max_tokens=3)
    results, barrier = [], threading.Barrier(2)

    def run(prompt):
        barrier.wait()
        results.append(on.generate(prompt=prompt, max_tokens=60, ignore_eos=True)[2].usage.completion_tokens)
    threads = [threading.Thread(target=run, args=(p,)) for p in ("zzzz other text", "qqqq more text")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert results == [60, 60]                                   # both ran; neither was refused or starved


def test_the_ids_a_free_slot_keeps_are_what_its_cache_holds(servers):
    """After a request that slid its window past the context: prefill the ids slot 0 claims
    into slot 1, and compare every layer's keys and values position by position."""
    on, _ = servers
    list(on.stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_tokens=50, ignore_eos=True, temperature=0.0),
                          timeout=30))
    engine = on.server.engine
    assert on.wait_for(lambda: engine.table.running == 0)
    slot = next(s for s, c in enumerate(engine.table.cached) if c is not None and len(c) > 20)
    ids = engine.table.cached[slot].tolist()
    other = 1 - slot
    engine.stop()                                               # the runtime is ours from here
    holds_what_prefill_writes(on, slot, ids, other)


def test_a_free_slots_cache_survives_decode_steps_of_rows_above_it(tiny_run, tmp_path_factory):
    """Slot 0's request ends while slot 1's runs on, so every decode step computes row 0 too
    (rows [0, 2)). The positions slot 0 keeps must come through those steps untouched: prefill
    the ids it claims into slot 1 afterwards and compare every layer's keys and values."""
    live = LiveServer(cached_artifact(tiny_run, tmp_path_factory), max_batch=2, speculate=0)
    try:
        engine, t = live.server.engine, live.server.engine.table
        first = live.stub.Generate(pb.GenerateRequest(prompt="zq", max_tokens=1024, ignore_eos=True), timeout=60)
        next(first)
        second = live.stub.Generate(pb.GenerateRequest(prompt="xw", max_tokens=1024, ignore_eos=True), timeout=60)
        next(second)
        assert t.owner[0] is not None and t.owner[1] is not None
        first.cancel()                                          # slot 0 is freed, keeping its cache
        assert live.wait_for(lambda: t.cached[0] is not None and t.owner[1] is not None)
        steps = live.metric("shelley_batch_size_count")
        assert live.wait_for(lambda: live.metric("shelley_batch_size_count") > steps + 30)
        assert t.owner[1] is not None                           # ...and row 0 was computed 30 times
        ids = t.cached[0].tolist()
        second.cancel()
        assert live.wait_for(lambda: t.running == 0)
        engine.stop()                                           # the runtime is ours from here
        holds_what_prefill_writes(live, 0, ids, 1)
    finally:
        live.close()
