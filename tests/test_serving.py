"""The serving stage against a real in-process gRPC server and a tiny exported model."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from core.errors import UserError
from serving.grpc.proto import pb
from tests.serving_live import LiveServer

MAX_NEW = 20000
PROMPT = "ROMEO:\nBut, soft!"


@pytest.fixture(scope="module")
def model(tiny_run, art):
    return tiny_run, art


@pytest.mark.parametrize("prompt", [PROMPT, "From fairest creatures we desire increase,"[:32]])
def test_stream_equals_offline_greedy_past_the_context(live, model, prompt):
    """80 tokens with a 32-token context: the window slides several times (at once for a
    prompt that fills the context)."""
    from training.checkpoint import load_run
    from training.generate import generate
    from training.tokenizer import decode, encode, eos_id

    torch_model, _, tok = load_run(model[0])
    prompt_ids = encode(tok, prompt)
    want = list(generate(torch_model, prompt_ids, 80, temperature=0.0, stop_ids=[eos_id(tok)]))
    text, ids, last = live.generate(prompt=prompt, max_tokens=80, temperature=0.0)
    assert ids == [t for t in want if t != eos_id(tok)]
    assert text == decode(tok, ids)
    assert last.finish_reason == ("stop" if want[-1] == eos_id(tok) else "length")
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(prompt_ids), len(want))
    assert len(prompt_ids) + len(want) > 2 * 32


def _seeded(i: int) -> dict:
    return dict(prompt=PROMPT[: 3 + 2 * i], max_tokens=20 + 3 * i, temperature=0.7 + 0.05 * i,
                top_k=(0, 5, 20)[i % 3], top_p=(1.0, 0.9)[i % 2], seed=1000 + i, ignore_eos=True)


def test_concurrent_seeded_requests_equal_their_solo_runs(live):
    solo = [live.generate(**_seeded(i))[1] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda i: live.generate(**_seeded(i))[1], range(16)))
    assert together == solo
    assert len({tuple(s) for s in solo}) == 16          # the requests really differ
    assert live.metric("shelley_batch_size_bucket", le="4.0") < live.metric("shelley_batch_size_count")


def test_complete_and_model_info(live):
    text, ids, _ = live.generate(prompt=PROMPT, max_tokens=12, seed=5)
    r = live.stub.Complete(pb.GenerateRequest(prompt=PROMPT, max_tokens=12, seed=5), timeout=30)
    assert (r.text, list(r.token_ids), r.usage.completion_tokens) == (text, ids, 12)
    info = live.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert (info.context_length, info.provider, info.max_new_tokens) == (32, "CPUExecutionProvider", MAX_NEW)


def test_stop_sequence_ends_generation_without_sending_it(live):
    full, _, _ = live.generate(prompt=PROMPT, max_tokens=40, seed=3, ignore_eos=True)
    stop = full[12:15]
    text, _, last = live.generate(prompt=PROMPT, max_tokens=40, seed=3, ignore_eos=True, stop=[stop, "\x00never"])
    assert (text, last.finish_reason) == (full[: full.find(stop)], "stop")


def test_stream_deltas_never_split_utf8(live):
    """Characters outside the char vocab are spelled as byte tokens; deltas stay whole."""
    from core.tokens import TokenTable
    from serving.engine.core import Request, check_stop
    from serving.engine.sampling import SamplingParams

    tok = live.server.artifact.tokenizer
    word = "é€😀 ok"
    ids = tok.encode(word, add_special_tokens=False).ids
    assert len(ids) > len(word)                           # multi-byte chars became byte tokens
    r = Request([0], SamplingParams(max_tokens=100), TokenTable(tok).stream())
    deltas = [check_stop(r, t, eos=-1)[1] for t in ids]
    assert "".join(deltas) == word and "" in deltas and "\ufffd" not in "".join(deltas)
    text, _, _ = live.generate(prompt="naïve café 😀", max_tokens=5, temperature=0.0)
    assert "\ufffd" not in text


BAD = [
    (dict(prompt="x" * 33), "prompt"),
    (dict(prompt="hi", max_tokens=0), "max_tokens"),
    (dict(prompt="hi", max_tokens=MAX_NEW + 1), "max_tokens"),
    (dict(prompt="hi", temperature=-0.5), "temperature"),
    (dict(prompt="hi", top_p=0.0), "top_p"),
    (dict(prompt="hi", top_p=1.5), "top_p"),
    (dict(prompt="hi", top_k=-1), "top_k"),
    (dict(prompt="hi", stop=["a"] * 9), "stop"),
    (dict(prompt="hi", stop=[""]), "stop"),
]


@pytest.mark.parametrize("fields,field", BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_input_is_invalid_argument_naming_the_field(live, fields, field):
    for call in (lambda: live.generate(**fields), lambda: live.stub.Complete(pb.GenerateRequest(**fields))):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.value.details()


def test_oversized_message_is_refused_by_grpc(live):
    with pytest.raises(grpc.RpcError) as e:
        live.generate(prompt="x" * (2 << 20))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_cancel_and_deadline_free_the_slot(live):
    before = live.metric("shelley_requests_total", rpc="Generate", code="CANCELLED")
    call = live.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=MAX_NEW, ignore_eos=True), timeout=60)
    next(call), next(call)
    assert live.metric("shelley_requests_running") == 1
    call.cancel()
    assert live.wait_for(lambda: live.metric("shelley_requests_running") == 0, 5)
    with pytest.raises(grpc.RpcError) as e:
        live.generate(prompt="hi", max_tokens=MAX_NEW, ignore_eos=True, timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert live.wait_for(lambda: live.metric("shelley_requests_running") == 0, 5)
    assert live.wait_for(lambda: live.metric("shelley_requests_total", rpc="Generate", code="CANCELLED")
                         >= before + 2, 5)


def test_metrics_endpoint_shows_counters_moving(live):
    def value(text, name):
        return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{"))
    before = live.scrape()
    live.generate(prompt=PROMPT, max_tokens=7, ignore_eos=True)
    after = live.scrape()
    assert value(after, "shelley_generated_tokens_total") == value(before, "shelley_generated_tokens_total") + 7
    assert value(after, "shelley_prompt_tokens_total") > value(before, "shelley_prompt_tokens_total")
    assert value(after, "shelley_time_to_first_token_seconds_count") == value(before, "shelley_time_to_first_token_seconds_count") + 1
    assert value(after, 'shelley_requests_total{code="OK",rpc="Generate"}'.split("{")[0]) > value(before, "shelley_requests_total")
    for name in ("shelley_inter_token_latency_seconds_bucket", "shelley_queue_wait_seconds_count",
                 "shelley_request_duration_seconds_count", "shelley_batch_size_count",
                 "shelley_requests_waiting", "shelley_model_info"):
        assert name in after


def test_queue_overflow_is_resource_exhausted(model):
    s = LiveServer(model[1], max_batch=1, max_queue=2, max_new_tokens=MAX_NEW)
    calls = []
    try:
        long = pb.GenerateRequest(prompt="hi", max_tokens=MAX_NEW, ignore_eos=True)
        calls.append(s.stub.Generate(long, timeout=60))
        next(calls[0])
        for _ in range(2):      # these wait: the one batch slot is taken
            calls.append(s.stub.Generate(long, timeout=60))
            threading.Thread(target=LiveServer.drain_quietly, args=(calls[-1],), daemon=True).start()
        assert s.wait_for(lambda: s.metric("shelley_requests_waiting") == 2)
        with pytest.raises(grpc.RpcError) as e:
            s.generate(prompt="hi", max_tokens=3)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue" in e.value.details()
        assert s.wait_for(lambda: s.metric("shelley_requests_total", rpc="Generate", code="RESOURCE_EXHAUSTED") == 1)
    finally:
        for c in calls:
            c.cancel()
        s.close()


def test_health_transitions_and_drain(model):
    """NOT_SERVING until loaded; drain: NOT_SERVING, new work UNAVAILABLE, running finishes."""
    s = LiveServer(model[1], load=False, max_new_tokens=MAX_NEW, drain_seconds=30)
    try:
        assert s.health_of() == s.health_of("") == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as e:
            s.generate(prompt="hi", max_tokens=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        s.call(s.server.load())
        assert s.health_of() == s.health_of("") == "SERVING"
        call = s.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=4000, ignore_eos=True), timeout=60)
        got = [next(call)]
        drained = s.spawn(s.server.drain())
        assert s.wait_for(lambda: s.health_of() == "NOT_SERVING", 5)
        with pytest.raises(grpc.RpcError) as e:
            s.generate(prompt="hi", max_tokens=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in e.value.details()
        assert not drained.done()                        # the long stream is still running
        got += list(call)
        assert got[-1].finish_reason == "length" and sum(len(m.token_ids) for m in got) == 4000
        drained.result(30)
    finally:
        s.channel.close()
        s.loop.call_soon_threadsafe(s.loop.stop)


def test_corrupt_or_incomplete_artifact_is_refused(model, tmp_path):
    import shutil

    from core.artifact import load_artifact

    bad = tmp_path / "art"
    shutil.copytree(model[1], bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"corrupt or incomplete \(model.onnx"):
        load_artifact(bad)
    (bad / "tokenizer.json").unlink()
    r = subprocess.run([sys.executable, "-m", "serving", "--model", str(bad), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "tokenizer.json is missing" in r.stderr


def test_missing_precision_is_refused_before_listening(model):
    """`--precision int8` for an artifact exported without it: the one line and exit 2,
    before any port opens (no log of listening, no teardown traceback from grpc)."""
    r = subprocess.run([sys.executable, "-m", "serving", "--model", str(model[1]), "--precision", "int8",
                        "--port", "0", "--http-port", "0", "--metrics-port", "-1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "has no int8 model" in r.stderr, r.stderr


def test_serving_never_imports_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import serving.server, serving.client, serving.__main__, serving.engine.core, serving.engine.runtime\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m])\n"
            "assert not [m for m in sys.modules if m.startswith('training')], 'imports training'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr


def test_a_running_rows_cache_never_moves(live):
    """While others join, leave and slide past the context, a running request's keys and
    values stay where they were written: bit for bit, in its own slot."""
    import threading as th

    from serving.engine.core import Engine, EngineConfig
    from serving.engine.runtime import Runtime
    from serving.engine.sampling import SamplingParams

    rt = Runtime(live.server.artifact, "cpu", threads=1, slots=4)
    snapshots, done = [], th.Event()
    engine = Engine(live.server.artifact, EngineConfig(max_batch=4), rt, publish=lambda batch: None)
    decode = rt.decode

    def watched_decode(tokens, lengths):    # slot 0's cache after every step it is in
        out = decode(tokens, lengths)
        if engine.table.owner[0] is first:
            n = int(lengths[0]) + 1
            snapshots.append([(k[0, :, :n].copy(), v[0, :, :n].copy()) for k, v in map(rt.cache.host, range(2))])
        else:
            done.set()
        return out
    rt.decode = watched_decode
    engine.start()
    try:   # `first` fits the 32-token context; the others join, leave and slide around it
        first = engine.submit("R", SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
        others = [engine.submit(PROMPT[:3 + i] if i != 2 else PROMPT + PROMPT[:9],
                                SamplingParams(max_tokens=4 + 5 * i, seed=i, ignore_eos=True)) for i in range(5)]
        assert done.wait(30) and first.slot == 0 and all(r.slot > 0 for r in others)
    finally:
        engine.stop()
    assert len(snapshots) == 29 and others[2].generated > 32 - len(PROMPT + PROMPT[:9])   # one slid
    for earlier, later in zip(snapshots, snapshots[1:]):   # slot 0 only grew; nothing moved
        for (k0, v0), (k1, v1) in zip(earlier, later):
            n = k0.shape[1]
            assert k1.shape[1] == n + 1 and np.array_equal(k0, k1[:, :n]) and np.array_equal(v0, v1[:, :n])


def test_config_flags_beat_env_which_beats_defaults():
    from serving.config import parse_args

    env = {"SHELLEY_MODEL": "art", "SHELLEY_MAX_BATCH": "8", "SHELLEY_DRAIN_SECONDS": "2.5"}
    cfg = parse_args(["--max-batch", "4"], environ=env)
    assert (cfg.model, cfg.max_batch, cfg.drain_seconds, cfg.port, cfg.metrics_port) == ("art", 4, 2.5, 50051, 9090)
    assert cfg.ort_spin == "call" and parse_args(["--ort-spin", "off"], environ=env).ort_spin == "off"
    assert parse_args([], environ={**env, "SHELLEY_ORT_SPIN": "always"}).ort_spin == "always"
    assert parse_args([], environ={**env, "SHELLEY_ORT_SPIN": "true"}).ort_spin == "always"   # the old boolean
    for argv, env in ((["--model", "a", "--device", "tpu"], {}), ([], {}), (["--model", "a"], {"SHELLEY_PORT": "x"}),
                      (["--model", "a"], {"SHELLEY_ORT_SPIN": "maybe"}), (["--model", "a", "--ort-spin", "1"], {})):
        with pytest.raises(UserError):
            parse_args(argv, environ=env)


def test_client_cli_streams_and_reports_refusals(live, capsys):
    from serving import client

    target = f"127.0.0.1:{live.port}"
    assert client.main([PROMPT, "--target", target, "--max-tokens", "5", "--temperature", "0"]) == 0
    text, _, _ = live.generate(prompt=PROMPT, max_tokens=5, temperature=0.0)
    out = capsys.readouterr()
    assert out.out == PROMPT + text + "\n" and "[length; " in out.err
    with pytest.raises(UserError, match="INVALID_ARGUMENT: top_p"):
        client.main(["hi", "--target", target, "--top-p", "2"])


def test_healthcheck_probe_exit_status(live):
    from serving import healthcheck

    assert healthcheck.main(["--target", f"127.0.0.1:{live.port}"]) == 0
    assert healthcheck.main(["--target", f"127.0.0.1:{live.port}", "--service", "shelley.v1.TextGeneration"]) == 0
    assert healthcheck.main(["--target", f"127.0.0.1:{live.port}", "--service", "nope"]) == 1
