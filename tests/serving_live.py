"""A real grpc.aio server (and its HTTP front door) on ephemeral loopback ports, run on its
own event-loop thread.

Tests talk to it with ordinary blocking stubs and httpx (threads give concurrency), so no
async test plugin is needed. `live.base` is the HTTP root (http://127.0.0.1:PORT).
"""
from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.artifact import load_artifact
from serving.config import ServeConfig
from serving.grpc.proto import SERVICE_NAME, pb, pb_grpc
from serving.server import Server


class LiveServer:
    def __init__(self, art: Path, load: bool = True, **overrides):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        cfg = ServeConfig(model=str(art), host="127.0.0.1", port=0, metrics_port=0, **{"http_port": 0, **overrides})
        self.server = Server(cfg, load_artifact(art))
        self.port = self.call(self.server.start())
        self.http_port = self.server.http_port
        self.base = f"{'https' if cfg.tls_cert else 'http'}://127.0.0.1:{self.http_port}"
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.TextGenerationStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        if load:
            self.call(self.server.load())

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def health_of(self, service: str = SERVICE_NAME) -> str:
        r = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def metric(self, name: str, **labels) -> float:
        return self.server.metrics.registry.get_sample_value(name, labels) or 0.0

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()

    def generate(self, timeout: float = 60, **fields) -> tuple[str, list[int], pb.GenerateResponse]:
        text, ids, last = [], [], None
        for last in self.stub.Generate(pb.GenerateRequest(**fields), timeout=timeout):
            text.append(last.text)
            ids.extend(last.token_ids)
        return "".join(text), ids, last

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.01)
        return False

    @staticmethod
    def drain_quietly(call) -> None:
        """Read a streaming call to its end, ignoring how it ends (for background threads)."""
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass

    def close(self) -> None:
        try:
            self.call(self.server.drain())
        finally:
            self.channel.close()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
