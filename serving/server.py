"""The server: one engine behind two front doors (gRPC: serving/grpc/api.py; HTTP:
serving/http/app.py), with health, reflection, API keys, TLS, metrics and the drain.

    server = Server(config, artifact)
    port = await server.start()     # gRPC and HTTP listening; health NOT_SERVING
    await server.load()             # ONNX session + warm-up; health SERVING
    req = server.submit(prompt, params)          # what both front doors call
    async for ev in server.events(req, access): ...
    await server.drain()            # SIGTERM: NOT_SERVING, refuse new (UNAVAILABLE / 503), let
                                    # running streams finish within --drain-seconds, stop
    await server.failed.wait()      # set if the engine thread died: health is NOT_SERVING
                                    # and `python -m serving` exits non-zero (a restart)

State and its owners: `phase` (loading, serving, draining, failed, stopped) is the one
flag that admits requests, answers health and runs the drain; it and `in_flight` (requests
submitted whose last event has not yet been delivered) belong to the event loop. The
engine's batch belongs to the engine thread; requests reach it through its inbox and
come back as events through `deliver`, once per engine step.
"""
from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.artifact import Artifact
from core.chat import ChatTemplate
from core.errors import EngineFailed, ShuttingDown
from serving import auth
from serving.chat import Chat
from serving.config import ServeConfig
from serving.engine.core import Engine, EngineConfig, Event, Finish, Request
from serving.grpc.api import DecodeGuard, TextGeneration
from serving.http.app import HttpFront
from serving.logs import Access
from serving.metrics import Metrics
from serving.grpc.proto import SERVICE_NAME, pb_grpc
from serving.engine.grammar import Grammars
from serving.engine.runtime import Runtime
from serving.engine.sampling import SamplingParams
from serving.shape import Shaper

log = logging.getLogger("shelley.server")
MIN_PACE = 0.002   # s: below this interval pacing costs a lone stream more than its messages do
MAX_MESSAGE_BYTES = 1 << 20   # grpc refuses bigger requests itself (RESOURCE_EXHAUSTED)


class Phase(enum.Enum):
    LOADING = "the model is still loading; retry shortly"
    SERVING = ""
    DRAINING = "the server is shutting down; retry on another replica"
    FAILED = "the model engine failed; the server is restarting, retry on another replica"
    STOPPED = "the server has stopped; retry on another replica"


@dataclass(frozen=True)
class ModelCard:
    """What the server tells clients about its model (GetModelInfo, GET /v1/models)."""
    name: str
    architecture: str
    params: int
    vocab_size: int
    context_length: int
    n_layer: int
    n_head: int
    head_dim: int
    eos_token_id: int
    window_keep: int
    max_batch: int
    max_new_tokens: int
    provider: str = ""        # known once the model is loaded
    precision: str = ""
    chat_template: str = ""   # Jinja2 (core/chat.py); "" when the artifact predates chat
    chat_stop: tuple[str, ...] = ()
    chat_speakers: tuple[str, ...] = ()   # the corpus's frequent speakers, default pair first


class Server:
    def __init__(self, config: ServeConfig, artifact: Artifact):
        self.config, self.artifact = config, artifact
        self.metrics = Metrics()
        self.health = health.aio.HealthServicer()
        self.keys = auth.load_keys(config)
        mc = artifact.config
        self.card = ModelCard(
            name=mc.name or artifact.path.name, architecture=mc.architecture, params=mc.params,
            vocab_size=mc.vocab_size, context_length=mc.context_length, n_layer=mc.n_layer, n_head=mc.n_head,
            head_dim=mc.head_dim, eos_token_id=mc.eos_token_id, window_keep=mc.window_keep,
            max_batch=config.max_batch, max_new_tokens=config.max_new_tokens,
            **chat_card(artifact.chat))
        self.chat = Chat(artifact.chat)   # the template, compiled once
        self.shaper = Shaper(self.chat, config.max_new_tokens,   # both front doors shape requests with it
                             Grammars(artifact.tokenizer, mc.vocab_size, mc.eos_token_id))
        self.engine: Engine | None = None
        self.phase = Phase.LOADING
        self.in_flight = 0
        self.failed = asyncio.Event()   # the engine died: stop serving, exit non-zero
        self.port = self.metrics_port = self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self.http: HttpFront | None = None

    async def start(self) -> int:
        opts = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0)]
        auth.check_tls_files(self.config)
        self._grpc = grpc.aio.server(options=opts, interceptors=[auth.ApiKeyInterceptor(self.keys, self.metrics),
                                                                 DecodeGuard()])
        pb_grpc.add_TextGenerationServicer_to_server(TextGeneration(self), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], self._grpc)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        host = self.config.host
        address = f"[{host}]:{self.config.port}" if ":" in host else f"{host}:{self.config.port}"
        creds = auth.grpc_credentials(self.config)
        self.port = self._grpc.add_secure_port(address, creds) if creds else self._grpc.add_insecure_port(address)
        await self._grpc.start()
        if self.config.http_port >= 0:
            self.http = HttpFront(self)
            self.http_port = await self.http.start(host, self.config.http_port)
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(host, self.config.metrics_port)
        log.info("listening on %s:%d (gRPC%s), HTTP on :%s, metrics on :%s%s", host, self.port,
                 ", TLS" + (" + client certificates" if self.config.tls_client_ca else "") if creds else "",
                 self.http_port if self.http else "off", self.metrics_port if self.config.metrics_port >= 0 else "off",
                 f"; {len(self.keys)} API key(s) required" if self.keys else "")
        return self.port

    async def load(self) -> None:
        """Build the ONNX session and warm it up off the event loop, then go SERVING."""
        c = self.config
        loop = asyncio.get_running_loop()

        def publish(batch):  # engine thread -> event loop, once per step
            loop.call_soon_threadsafe(self.deliver, batch)

        def crashed(e: BaseException) -> None:  # engine thread, after every request has ended
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._engine_failed(e)))

        def build() -> Engine:
            runtime = Runtime(self.artifact, c.device, c.threads, c.precision, slots=c.max_batch, spin=c.ort_spin,
                              spread=c.spread)
            engine = Engine(self.artifact, EngineConfig(c.max_batch, c.max_queue, c.max_new_tokens, c.speculate,
                                                        c.prefix_cache),
                            runtime, publish, self.metrics, on_crash=crashed)
            t0 = time.perf_counter()
            engine.warmup()
            log.info("warmed up in %.0f ms", 1000 * (time.perf_counter() - t0))
            log.info("%s", runtime.calibrate())   # before any request: it writes into the slots
            return engine

        self.engine = await asyncio.to_thread(build)
        self.engine.start()
        rt = self.engine.rt
        self.card = dataclasses.replace(self.card, provider=rt.provider, precision=rt.precision)
        self.metrics.model.info({"name": self.card.name, "params": str(self.card.params),
                                 "context": str(self.card.context_length), "provider": rt.provider,
                                 "precision": rt.precision})
        if self.phase is Phase.LOADING:   # a SIGTERM during the load wins
            self.phase = Phase.SERVING
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("serving %s", self.artifact.path)

    @property
    def serving(self) -> bool:
        return self.phase is Phase.SERVING

    def submit(self, prompt: str, params: SamplingParams, param: str = "prompt") -> Request:
        """Queue a request on the engine (InvalidRequest, QueueFull, ShuttingDown). Event loop only.
        `param` names the field the prompt came from ("messages" for a rendered chat)."""
        if self.phase is not Phase.SERVING:
            raise ShuttingDown(self.phase.value)
        req = self.engine.submit(prompt, params, asyncio.Queue(), param)
        self.in_flight += len(req.choices)
        return req

    def deliver(self, batch: list[tuple[Request, Event]]) -> None:
        """An engine step's events into their requests' queues (on the event loop)."""
        for req, ev in batch:
            req.sink.put_nowait(ev)
            if ev.finish_reason:
                self.in_flight -= 1

    async def events(self, req: Request, access: Access):
        """The request's events (of all its n choices, `Event.index` saying whose), paced: the
        first token goes at once, and after it a stream sends at most one message per
        `in_flight / --message-rate` seconds, merging the events of one choice that came
        meanwhile (32 streams: every 32 ms at the default). Each message costs the server and
        the client the same whatever it carries, and with many streams those costs would
        take the cores the model needs. Under MIN_PACE (a few streams) events go as they
        come, merged only when the client falls behind. Ends after every choice's last event.
        Leaving early (client gone, deadline) cancels the request: its rows are freed at the
        next step."""
        access.prompt_tokens = req.prompt_tokens
        rate, loop = self.config.message_rate, asyncio.get_running_loop()
        sent, last, left, pending = 0, 0.0, len(req.choices), None
        try:
            while True:
                ev: Event = pending or await req.sink.get()
                pending = None
                interval = self.in_flight / rate if rate else 0.0
                if sent and interval >= MIN_PACE and not ev.finish_reason:
                    wait = last + interval - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                while not ev.finish_reason and not req.sink.empty():
                    nxt = req.sink.get_nowait()
                    if nxt.index != ev.index:
                        pending = nxt
                        break
                    ev = merge(ev, nxt)
                if ev.finish_reason == Finish.ERROR:
                    raise EngineFailed(started=sent > 0)
                access.saw(ev)
                sent += len(ev.token_ids)
                yield ev
                last = loop.time()
                left -= bool(ev.finish_reason)
                if not left:
                    return
        finally:
            req.cancel()  # no-op when finished

    async def _engine_failed(self, e: BaseException) -> None:
        """The engine thread died (every request already ended with an error): stop serving,
        so probes fail and the process exits non-zero for Kubernetes to restart it."""
        log.error("engine failed (%s: %s); not serving", type(e).__name__, e)
        self.phase = Phase.FAILED
        await asyncio.to_thread(self.engine.abandon)   # what was submitted after its last look
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.failed.set()

    async def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def drain(self) -> None:
        """NOT_SERVING, refuse new work, let running requests finish (bounded), then stop."""
        if self.phase in (Phase.DRAINING, Phase.STOPPED):
            return
        if self.phase is not Phase.FAILED:
            self.phase = Phase.DRAINING
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        deadline = time.monotonic() + self.config.drain_seconds
        if self.engine:
            while self.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            left = self.in_flight
            log.info("drained%s", f"; cancelling {left} requests past --drain-seconds" if left else "")
            await asyncio.to_thread(self.engine.stop)
            while self.in_flight and time.monotonic() < deadline + 1:   # their CANCELLED events
                await asyncio.sleep(0.01)
        stops = [self._grpc.stop(grace=1.0)] if self._grpc else []   # lets the last messages out
        if self.http:
            stops.append(self.http.stop())
        await asyncio.gather(*stops)
        self.metrics.close()
        self.phase = Phase.STOPPED


def merge(a: Event, b: Event) -> Event:
    """Two consecutive events of one choice as one (the later one's finish and usage)."""
    lps = None if a.logprobs is None and b.logprobs is None else (a.logprobs or []) + (b.logprobs or [])
    trace = None if a.grammar_trace is None and b.grammar_trace is None else \
        (a.grammar_trace or []) + (b.grammar_trace or [])
    return Event(a.text + b.text, a.token_ids + b.token_ids, b.finish_reason, b.prompt_tokens,
                 b.completion_tokens, lps, a.index, a.prompt_logprobs or b.prompt_logprobs, trace, b.cached_tokens)


def chat_card(chat: ChatTemplate | None) -> dict:
    """The ModelCard's chat fields from the artifact's template (empty when it has none)."""
    if chat is None:
        return {}
    form = chat.form
    pair = [form[k] for k in ("user", "assistant") if form.get(k)]
    speakers = pair + [n for n in form.get("top_speakers", []) if n not in pair]
    return {"chat_template": chat.template, "chat_stop": chat.stop, "chat_speakers": tuple(speakers)}
