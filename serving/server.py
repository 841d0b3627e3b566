"""The server: a thin gRPC TextGeneration servicer and the HTTP front door over one engine,
with health, reflection, API keys, TLS and drain.

    server = Server(config, artifact)
    port = await server.start()     # gRPC and HTTP (serving/http.py) listening; health NOT_SERVING
    await server.load()             # ONNX session + warm-up; health SERVING
    req = server.submit(prompt, params)          # what both front doors call
    async for ev in server.events(req, access): ...
    await server.drain()            # SIGTERM: NOT_SERVING, refuse new (UNAVAILABLE / 503), let
                                    # running streams finish within --drain-seconds, stop
    await server.failed.wait()      # set if the engine thread died: health is NOT_SERVING
                                    # and `python -m serving` exits non-zero (a restart)

Exceptions become status codes in one place (`_status_of`), applied by the `rpc` wrapper,
which also counts every RPC by method and code, and writes its access-log line with the
request id (the client's `x-request-id` metadata, else a new one, sent back in the initial
metadata). API keys are checked by one interceptor (serving/auth.py).
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.artifact import Artifact
from core.errors import EngineFailed, InvalidRequest, QueueFull, ShuttingDown
from serving import auth
from serving.config import ServeConfig
from serving.engine import Engine, EngineConfig, Event, Finish, Request, TokenLogprob
from serving.http import HttpFront
from serving.logprobs import TokenTexts
from serving.logs import Access, request_id
from serving.metrics import Metrics
from serving.proto import SERVICE_NAME, pb, pb_grpc
from serving.runtime import Runtime
from serving.sampling import SamplingParams

log = logging.getLogger("shelley.server")
MAX_MESSAGE_BYTES = 1 << 20   # grpc refuses bigger requests itself (RESOURCE_EXHAUSTED)
DEFAULT_MAX_TOKENS = 64


def _status_of(e: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    if isinstance(e, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)
    if isinstance(e, ShuttingDown):
        return grpc.StatusCode.UNAVAILABLE, str(e)
    if isinstance(e, EngineFailed):  # nothing sent yet: safe to retry on another replica
        return (grpc.StatusCode.INTERNAL if e.started else grpc.StatusCode.UNAVAILABLE), str(e)
    log.exception("unexpected error in an RPC")
    return grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}"


def rpc(fn):
    """Map exceptions to status codes, record requests_total / request_duration, give the
    call its request id and write its access line. The handler gets the Access record."""
    name = fn.__name__

    async def begin(context) -> Access:
        metadata = dict(context.invocation_metadata() or ())
        access = Access(request_id(metadata.get("x-request-id")), "grpc", name)
        await context.send_initial_metadata((("x-request-id", access.request_id),))
        return access

    def record(self, code: grpc.StatusCode, access: Access) -> None:
        self.metrics.requests.labels(rpc=name, code=code.name).inc()
        self.metrics.duration.labels(rpc=name).observe(time.perf_counter() - access.t0)
        access.done(code.name)

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            access, code = await begin(context), grpc.StatusCode.CANCELLED  # until it ends normally
            try:
                async for item in fn(self, request, context, access):
                    yield item
                code = grpc.StatusCode.OK
            except Exception as e:
                code, message = _status_of(e)
                await context.abort(code, message)
            finally:
                record(self, code, access)
        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        access, code = await begin(context), grpc.StatusCode.CANCELLED
        try:
            result = await fn(self, request, context, access)
            code = grpc.StatusCode.OK
            return result
        except Exception as e:
            code, message = _status_of(e)
            await context.abort(code, message)
        finally:
            record(self, code, access)
    return unary


def params_of(r: pb.GenerateRequest) -> SamplingParams:
    return SamplingParams(
        max_tokens=r.max_tokens if r.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
        temperature=r.temperature if r.HasField("temperature") else 1.0,
        top_k=r.top_k, top_p=r.top_p if r.HasField("top_p") else 1.0,
        seed=r.seed if r.HasField("seed") else None, stop=tuple(r.stop), ignore_eos=r.ignore_eos,
        logprobs=r.logprobs if r.HasField("logprobs") else None)


def merge(a: Event, b: Event) -> Event:
    """Two consecutive events of one request as one (the later one's finish and usage)."""
    lps = None if a.logprobs is None and b.logprobs is None else (a.logprobs or []) + (b.logprobs or [])
    return Event(a.text + b.text, a.token_ids + b.token_ids, b.finish_reason, b.prompt_tokens,
                 b.completion_tokens, lps)


def pb_logprobs(entries: list[TokenLogprob] | None, texts: TokenTexts) -> list[pb.TokenLogprob]:
    return [pb.TokenLogprob(token_id=e.token_id, token=texts(e.token_id), logprob=e.logprob,
                            top=[pb.TopLogprob(token_id=i, token=texts(i), logprob=lp) for i, lp in e.top])
            for e in entries or []]


class TextGeneration(pb_grpc.TextGenerationServicer):
    def __init__(self, server: "Server"):
        self.server, self.metrics, self.texts = server, server.metrics, server.texts

    def _events(self, request: pb.GenerateRequest, access: Access):
        return self.server.events(self.server.submit(request.prompt, params_of(request)), access)

    @rpc
    async def Generate(self, request, context, access):
        async for ev in self._events(request, access):
            msg = pb.GenerateResponse(text=ev.text, token_ids=ev.token_ids, finish_reason=ev.finish_reason,
                                      logprobs=pb_logprobs(ev.logprobs, self.texts))
            if ev.finish_reason:
                msg.usage.prompt_tokens, msg.usage.completion_tokens = ev.prompt_tokens, ev.completion_tokens
            yield msg

    @rpc
    async def Complete(self, request, context, access):
        text, ids, lps = [], [], []
        async for ev in self._events(request, access):
            text.append(ev.text)
            ids.extend(ev.token_ids)
            lps.extend(ev.logprobs or [])
        return pb.CompleteResponse(text="".join(text), token_ids=ids, finish_reason=ev.finish_reason,
                                   usage=pb.Usage(prompt_tokens=ev.prompt_tokens,
                                                  completion_tokens=ev.completion_tokens),
                                   logprobs=pb_logprobs(lps, self.texts))

    @rpc
    async def GetModelInfo(self, request, context, access):
        return self.server.model_info()


class Server:
    def __init__(self, config: ServeConfig, artifact: Artifact):
        self.config, self.artifact = config, artifact
        self.metrics = Metrics()
        self.health = health.aio.HealthServicer()
        self.keys = auth.load_keys(config)
        self.texts = TokenTexts(artifact.tokenizer)
        self.engine: Engine | None = None
        self.runtime: Runtime | None = None
        self.draining = False
        self.failed = asyncio.Event()   # the engine died: stop serving, exit non-zero
        self.port = self.metrics_port = self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self.http: HttpFront | None = None

    async def start(self) -> int:
        opts = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0)]
        auth.check_tls_files(self.config)
        self._grpc = grpc.aio.server(options=opts, interceptors=[auth.ApiKeyInterceptor(self.keys, self.metrics)])
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

        def deliver(batch: list[tuple[Request, Event]]) -> None:
            for req, ev in batch:
                req.sink.put_nowait(ev)

        def publish(batch):  # engine thread -> event loop, once per step
            loop.call_soon_threadsafe(deliver, batch)

        def crashed(e: BaseException) -> None:  # engine thread, after every request has ended
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._engine_failed(e)))

        def build() -> Engine:
            self.runtime = Runtime(self.artifact, c.device, c.threads, c.precision, slots=c.max_batch,
                                   spin=c.ort_spin)
            engine = Engine(self.artifact, EngineConfig(c.max_batch, c.max_queue, c.max_new_tokens),
                            self.runtime, publish, self.metrics, on_crash=crashed)
            t0 = time.perf_counter()
            engine.warmup()
            log.info("warmed up in %.0f ms", 1000 * (time.perf_counter() - t0))
            return engine

        self.engine = await asyncio.to_thread(build)
        self.engine.start()
        mc = self.artifact.config
        self.metrics.model.info({"name": mc.name, "params": str(mc.params), "context": str(mc.context_length),
                                 "provider": self.runtime.provider, "precision": self.runtime.precision})
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s", self.artifact.path)

    @property
    def serving(self) -> bool:
        return self.engine is not None and not self.draining

    @property
    def model_name(self) -> str:
        return self.model_info().name or self.artifact.path.name

    def submit(self, prompt: str, params: SamplingParams) -> Request:
        """Queue a request on the engine (InvalidRequest, QueueFull, ShuttingDown)."""
        if self.draining or self.engine is None:
            raise ShuttingDown("the server is shutting down; retry on another replica" if self.draining
                               else "the model is still loading; retry shortly")
        return self.engine.submit(prompt, params, asyncio.Queue())

    async def events(self, req: Request, access: Access):
        """The request's events; those already waiting are merged into one, so a client that
        falls behind gets fewer, larger messages instead of a growing backlog. Leaving early
        (client gone, deadline) cancels the request: its row is freed at the next step."""
        access.prompt_tokens = req.prompt_tokens
        try:
            while True:
                ev: Event = await req.sink.get()
                while not ev.finish_reason and not req.sink.empty():
                    ev = merge(ev, req.sink.get_nowait())
                if ev.finish_reason == Finish.ERROR:
                    raise EngineFailed(req.generated > 0)
                access.saw(ev)
                yield ev
                if ev.finish_reason:
                    return
        finally:
            req.cancel()  # no-op when finished

    def model_info(self) -> pb.ModelInfo:
        mc, c = self.artifact.config, self.config
        rt = self.runtime
        return pb.ModelInfo(
            name=mc.name, architecture=mc.architecture, params=mc.params, vocab_size=mc.vocab_size,
            context_length=mc.context_length, n_layer=mc.n_layer, n_head=mc.n_head,
            head_dim=mc.head_dim, eos_token_id=mc.eos_token_id, window_keep=mc.window_keep,
            provider=rt.provider if rt else "", dtype=rt.precision if rt else "",
            max_batch=c.max_batch, max_new_tokens=c.max_new_tokens)

    async def _engine_failed(self, e: BaseException) -> None:
        """The engine thread died (every request already ended with an error): stop serving,
        so probes fail and the process exits non-zero for Kubernetes to restart it."""
        log.error("engine failed (%s: %s); not serving", type(e).__name__, e)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.failed.set()

    async def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def drain(self) -> None:
        """NOT_SERVING, refuse new work, let running requests finish (bounded), then stop."""
        if self.draining:
            return
        self.draining = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        deadline = time.monotonic() + self.config.drain_seconds
        if self.engine:
            self.engine.accepting = False
            while self.engine.in_flight() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            left = self.engine.in_flight()
            log.info("drained%s", f"; cancelling {left} requests past --drain-seconds" if left else "")
            await asyncio.to_thread(self.engine.stop)
        stops = [self._grpc.stop(grace=1.0)] if self._grpc else []   # lets the last messages out
        if self.http:
            stops.append(self.http.stop())
        await asyncio.gather(*stops)
        self.metrics.close()

    async def wait(self) -> None:
        if self._grpc:
            await self._grpc.wait_for_termination()
