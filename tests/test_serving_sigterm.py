"""`python -m serving` as a real process: SIGTERM drains (a running stream completes, a new
one is refused with UNAVAILABLE, health goes NOT_SERVING) and the process exits 0."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.proto import pb, pb_grpc
from tests.serving_fixtures import cached_artifact


def test_sigterm_drains_and_exits_zero(tiny_run, tmp_path_factory):
    art = cached_artifact(tiny_run, tmp_path_factory)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model", str(art), "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "-1", "--max-new-tokens", "20000", "--drain-seconds", "30"],
        stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:        # the log says where it listens, then when it serves
            m = re.search(r"listening on [\d.]+:(\d+)", line)
            port = int(m.group(1)) if m else port
            if "serving " in line:
                break
        assert port, "the server never said where it listens"
        tail = []
        threading.Thread(target=lambda: tail.extend(proc.stderr), daemon=True).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub, health = pb_grpc.TextGenerationStub(channel), health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == serving

        call = stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=6000, ignore_eos=True), timeout=60)
        got = [next(call)]
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
        got += list(call)
        assert got[-1].finish_reason == "length" and sum(len(m.token_ids) for m in got) == 6000
        assert proc.wait(30) == 0, "".join(tail)
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
