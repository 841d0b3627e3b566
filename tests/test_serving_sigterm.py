"""`python -m serving` as a real process, gRPC and HTTP on: SIGTERM drains (running streams
on both APIs complete, a new one is refused with UNAVAILABLE, health goes NOT_SERVING and
HTTP /health 503) and the process exits 0."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.grpc.proto import pb, pb_grpc
from tests.serving_fixtures import cached_artifact


def test_sigterm_drains_and_exits_zero(tiny_run, tmp_path_factory):
    art = cached_artifact(tiny_run, tmp_path_factory)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model", str(art), "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "-1", "--http-port", "0", "--max-new-tokens", "20000", "--drain-seconds", "30"],
        stderr=subprocess.PIPE, text=True)
    try:
        port = http_port = None
        for line in proc.stderr:        # the log says where it listens, then when it serves
            m = re.search(r"listening on [\d.]+:(\d+) .*HTTP on :(\d+)", line)
            port, http_port = (int(m.group(1)), int(m.group(2))) if m else (port, http_port)
            if "serving " in line:
                break
        assert port and http_port, "the server never said where it listens"
        tail = []
        threading.Thread(target=lambda: tail.extend(proc.stderr), daemon=True).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub, health = pb_grpc.TextGenerationStub(channel), health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == serving

        call = stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=6000, ignore_eos=True), timeout=60)
        got = [next(call)]
        web = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60)
        sse = web.stream("POST", "/v1/completions", json=dict(prompt="hi", max_tokens=6000, ignore_eos=True, stream=True))
        lines = sse.__enter__().iter_lines()
        next(lines)
        proc.send_signal(signal.SIGTERM)
        refused = None
        for _ in range(200):            # until the signal has been handled
            try:
                stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=5).next()
            except grpc.RpcError as e:
                refused = (e.code(), e.details())
                break
            time.sleep(0.01)
        # "shutting down" comes from the drain, which only waits while a stream is running
        assert refused and refused[0] == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused[1]
        assert web.get("/health").status_code == 503
        got += list(call)
        assert got[-1].finish_reason == "length" and sum(len(m.token_ids) for m in got) == 6000
        rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and '"finish_reason": "length"' in rest[-2]
        sse.__exit__(None, None, None)
        web.close()
        assert proc.wait(30) == 0, "".join(tail)
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
