"""Prometheus metrics (names fixed by docs/DESIGN.md), served on their own port.

    m = Metrics(); port = m.serve("0.0.0.0", 9090)    # GET :9090/metrics
    m.requests.labels(rpc="Generate", code="OK").inc()

Each Metrics has its own registry, so several servers can live in one process (tests).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DURATION = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("shelley_requests", "RPCs by method and status code", ["rpc", "code"], registry=r)
        self.prompt_tokens = Counter("shelley_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.generated_tokens = Counter("shelley_generated_tokens", "tokens generated", registry=r)
        self.duration = Histogram("shelley_request_duration_seconds", "RPC wall time", ["rpc"],
                                  buckets=DURATION, registry=r)
        self.ttft = Histogram("shelley_time_to_first_token_seconds", "submit to first token",
                              buckets=LATENCY, registry=r)
        self.inter_token = Histogram("shelley_inter_token_latency_seconds", "gap between a request's tokens",
                                     buckets=LATENCY, registry=r)
        self.queue_wait = Histogram("shelley_queue_wait_seconds", "submit to admission into the batch",
                                    buckets=LATENCY, registry=r)
        self.batch_size = Histogram("shelley_batch_size", "rows per decode step", buckets=BATCH, registry=r)
        self.prefix_queries = Counter("shelley_prefix_cache_queries", "prompt tokens looked up in the prefix cache",
                                      registry=r)
        self.prefix_hits = Counter("shelley_prefix_cache_hits", "prompt tokens found there (not prefilled again)",
                                   registry=r)
        self.spec_drafted = Counter("shelley_spec_decode_draft_tokens", "tokens drafted for a lone row to verify",
                                    registry=r)
        self.spec_accepted = Counter("shelley_spec_decode_accepted_tokens", "drafted tokens the model agreed with",
                                     registry=r)
        self.running = Gauge("shelley_requests_running", "requests in the batch", registry=r)
        self.waiting = Gauge("shelley_requests_waiting", "requests queued for a batch slot", registry=r)
        self.model = Info("shelley_model", "the model being served", registry=r)
        self._http = None

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server on a daemon thread; returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
