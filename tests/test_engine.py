"""The engine's parts on their own: slots, batch sampling, logprobs, stop decisions, and a
crashed engine (a fault injected into the runtime) that must not look healthy."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest

from core.logprobs import token_logprobs
from core.tokens import TextStream
from serving.engine.core import Finish, Request, check_stop
from serving.grpc.proto import pb, pb_grpc
from serving.engine.sampling import SamplingParams
from serving.engine.slots import SlotTable
from tests.serving_live import LiveServer


class Req:   # a stand-in owner for slot tests
    slot = -1


def test_slots_take_the_lowest_free_and_group_adjacent_runs():
    t = SlotTable(6, context=32)
    reqs = [Req() for _ in range(4)]
    assert t.admit(reqs) == [0, 1, 2, 3] and [r.slot for r in reqs] == [0, 1, 2, 3]
    t.release(1)
    t.release(2)
    assert (t.running, t.free, t.rows) == (2, 4, 4)
    assert t.admit([Req(), Req(), Req()]) == [1, 2, 4]
    assert SlotTable.runs([4, 1, 2]) == [(1, [1, 2]), (4, [4])]
    t.release(4)
    t.release(3)
    assert t.rows == 3
    with pytest.raises(ValueError):
        t.admit([Req() for _ in range(4)])


def _params(**kw):
    return SamplingParams(**{"max_tokens": 10, **kw})


def test_token_logprobs_match_a_float64_reference():
    logits = np.random.default_rng(2).normal(0, 4, (3, 40)).astype(np.float32)
    chosen = np.array([3, 17, 39])
    lp, top, top_lp = token_logprobs(logits, chosen, k=5)
    x = logits.astype(np.float64)
    ref = x - np.log(np.exp(x).sum(1, keepdims=True))
    np.testing.assert_allclose(lp, ref[[0, 1, 2], chosen], atol=1e-9)
    assert (top == np.argsort(-ref, axis=1, kind="stable")[:, :5]).all()
    np.testing.assert_allclose(top_lp, np.take_along_axis(ref, top, 1), atol=1e-9)
    assert np.all(np.diff(top_lp, axis=1) <= 0)
    assert token_logprobs(logits, chosen, k=0)[1].shape == (3, 0)


def _request(params, table=None):
    table = table or [t.encode() for t in ("a", "b", "c", "<eos>")]
    return Request([0], params, TextStream(table))


def test_check_stop_is_the_one_decision():
    eos = 3
    r = _request(_params(max_tokens=3))
    assert check_stop(r, 0, eos) == (None, "a")
    r.generated = 1
    assert check_stop(r, eos, eos) == (Finish.STOP, "")                 # EOS ends it, not sent
    r = _request(_params(max_tokens=2, ignore_eos=True))
    r.generated = 1
    assert check_stop(r, eos, eos) == (None, "<eos>")
    r.generated = 2
    assert check_stop(r, 1, eos) == (Finish.LENGTH, "b")
    r = _request(_params(stop=("bc",)))
    assert [check_stop(r, t, eos) for t in (0, 1)] == [(None, "a"), (None, "")]   # "b" held back
    assert check_stop(r, 2, eos) == (Finish.STOP, "")                   # "bc" never sent
    r = _request(_params(max_tokens=1), table=[b"\xc3"])                # half a UTF-8 character
    r.generated = 1
    assert check_stop(r, 0, eos) == (Finish.LENGTH, "\ufffd")           # shown as the tokenizer would


def test_a_crashed_engine_fails_requests_at_once_and_stops_serving(art):
    """A fault in the runtime mid-stream: the running stream ends INTERNAL, the waiting one
    UNAVAILABLE, health turns NOT_SERVING and the server asks to exit."""
    s = LiveServer(art, max_batch=1, max_new_tokens=10**6)
    try:   # the first request holds the one slot for good, so the second one waits
        long = pb.GenerateRequest(prompt="hi", max_tokens=10**6, ignore_eos=True)
        calls = [s.stub.Generate(long, timeout=30)]
        next(calls[0])
        calls.append(s.stub.Generate(long, timeout=30))
        assert s.wait_for(lambda: s.metric("shelley_requests_waiting") == 1)

        sse = s.spawn(asyncio.to_thread(_stream_sse, s.base))   # a third client, over HTTP
        assert s.wait_for(lambda: s.metric("shelley_requests_waiting") == 2)

        def broken(*args):
            raise RuntimeError("injected fault")
        s.server.engine.rt.decode = broken
        t0 = time.monotonic()
        codes = []
        for call in calls:
            with pytest.raises(grpc.RpcError) as e:
                list(call)
            codes.append(e.value.code())
        assert codes == [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE]
        status, events = sse.result(5)      # it was waiting: the stream opened, then said why it ends
        assert status == 200 and events[-1]["error"]["code"] == "unavailable"
        assert time.monotonic() - t0 < 5
        assert s.wait_for(lambda: s.server.failed.is_set(), 5)
        assert s.health_of() == s.health_of("") == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as e:
            s.generate(prompt="hi", max_tokens=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.close()


def _stream_sse(base: str) -> tuple[int, list]:
    """(HTTP status, the JSON events) of a streamed completion."""
    import httpx
    events = []
    with httpx.stream("POST", f"{base}/v1/completions", timeout=30,
                      json={"prompt": "hi", "max_tokens": 1000, "stream": True, "ignore_eos": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
    return r.status_code, events


def test_the_server_process_exits_non_zero_when_its_engine_dies(art):
    """The real `python -m serving` with a runtime whose third decode step raises."""
    code = textwrap.dedent(f"""
        import sys
        from serving.engine import runtime
        from serving import __main__ as main
        real, calls = runtime.Runtime.decode, [0]
        def faulty(self, *a):
            calls[0] += 1
            if calls[0] > 2 + 2:          # warm-up decodes twice
                raise RuntimeError("injected fault")
            return real(self, *a)
        runtime.Runtime.decode = faulty
        sys.exit(main.main(["--model", {str(art)!r}, "--host", "127.0.0.1", "--port", "0",
                            "--metrics-port", "-1"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        port = None
        for line in proc.stderr:
            if "listening on" in line:
                port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
            if "serving " in line and port:
                break
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.TextGenerationStub(ch)
            received = []
            with pytest.raises(grpc.RpcError) as e:
                for msg in stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=50, ignore_eos=True), timeout=30):
                    received.append(msg)
            # A broken stream is INTERNAL; one that never sent a token is UNAVAILABLE (safe to
            # retry elsewhere): which one depends on whether the first token reached the stream
            # before the failure did (they merge when they arrive together).
            want = grpc.StatusCode.INTERNAL if received else grpc.StatusCode.UNAVAILABLE
            assert e.value.code() == want, (e.value.code(), len(received))
        assert proc.wait(30) == 1
        assert "exiting with status 1: the engine failed" in proc.stderr.read()
    finally:
        proc.kill()

