"""The HTTP front door: OpenAI-compatible completions, /health and the playground page, a
Starlette app under uvicorn on the gRPC server's event loop, over the same engine.

    front = HttpFront(server)                    # server: serving.server.Server
    port = await front.start("0.0.0.0", 8000)   # 0 = an ephemeral port; TLS from the config
    await front.stop()                           # after the drain: running streams have ended

    POST /v1/completions   {"prompt": "ROMEO:", "max_tokens": 50, "stream": true, "logprobs": 3}
    GET  /v1/models        GET /health (200 SERVING, else 503)        GET / (the playground)

One gate middleware sees every /v1/* request: its request id (`x-request-id` in and out),
the API key, the metrics and the access line. Exceptions become statuses in one table
(`STATUS`) and errors take OpenAI's shape in one place (`error_response`), `param` taken from
the exception. A body over the limit gets its 413 at once; the rest of the upload is then
read and dropped (bounded), so the client reads the answer instead of a reset connection.
A client that disconnects cancels its request: the row is freed at the next step.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from core.errors import EngineFailed, InvalidRequest, QueueFull, ShuttingDown, UserError
from serving import openai_api as oa
from serving.auth import key_ok, uvicorn_ssl
from serving.logprobs import openai_logprobs
from serving.logs import Access, request_id

log = logging.getLogger("shelley.http")
PLAYGROUND = Path(__file__).resolve().parent / "playground"
MAX_BODY_BYTES = 1 << 20          # as gRPC's message limit
DISCARD_BYTES, DISCARD_SECONDS = 64 << 20, 10.0   # how much of an oversized upload is read and dropped
ROUTES = ("POST /v1/completions", "GET /v1/models")


class BodyTooLarge(Exception):
    """A request body over MAX_BODY_BYTES -> 413."""


# exception -> (status, OpenAI error type, code); EngineFailed depends on what was sent (_error_of)
STATUS = {InvalidRequest: (400, "invalid_request_error", None),
          BodyTooLarge: (413, "invalid_request_error", "request_too_large"),
          QueueFull: (429, "rate_limit_error", "queue_full"),
          ShuttingDown: (503, "service_unavailable", "unavailable")}


def _error_of(e: Exception) -> tuple[int, str, str | None]:
    """(HTTP status, OpenAI error type, code) of an exception."""
    if isinstance(e, EngineFailed):   # before any token: safe to retry elsewhere
        return (500, "server_error", None) if e.started else (503, "service_unavailable", "unavailable")
    if isinstance(e, HTTPException):
        return e.status_code, "invalid_request_error", "not_found" if e.status_code == 404 else None
    for kind, entry in STATUS.items():
        if isinstance(e, kind):
            return entry
    log.exception("unexpected error in an HTTP request")
    return 500, "server_error", None


def error_response(e: Exception) -> JSONResponse:
    status, kind, code = _error_of(e)
    message = str(e.detail) if isinstance(e, HTTPException) else \
        f"internal error: {type(e).__name__}" if status == 500 else str(e)
    body = oa.error_body(message, kind, getattr(e, "param", None), code)
    return (DiscardingResponse if status == 413 else JSONResponse)(body, status_code=status)


class DiscardingResponse(JSONResponse):
    """Sent whole at once, then the rest of the request body is read and dropped before the
    response ends: closing a socket with unread data makes the kernel reset the connection,
    and the client would see the reset instead of the answer."""

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": [*self.raw_headers, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        read, end = 0, time.monotonic() + DISCARD_SECONDS
        with contextlib.suppress(asyncio.TimeoutError):
            while read < DISCARD_BYTES:
                message = await asyncio.wait_for(receive(), max(0.0, end - time.monotonic()))
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
                read += len(message.get("body", b""))
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _unauthorized() -> JSONResponse:
    body = oa.error_body("missing or wrong API key: send the header `Authorization: Bearer KEY`",
                         "invalid_request_error", None, "invalid_api_key")
    return JSONResponse(body, status_code=401, headers={"www-authenticate": "Bearer"})


class Gate:
    """ASGI middleware for /v1/*: request id, API key, metrics, one access line."""

    def __init__(self, app, server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        route = f"{scope['method']} {scope['path']}"
        access = Access(request_id(headers.get("x-request-id")), "http", route)
        scope.setdefault("state", {}).update(access=access, client_gone=False)
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", access.request_id.encode())]}
            await send(message)

        try:
            if key_ok(self.server.keys, headers.get("authorization")):
                await self.app(scope, receive, send_with_id)
            else:
                await _unauthorized()(scope, receive, send_with_id)
        finally:
            code = "499" if scope["state"]["client_gone"] else str(status)   # nginx's "client closed"
            label = route if route in ROUTES else "other"
            self.server.metrics.requests.labels(rpc=label, code=code).inc()
            self.server.metrics.duration.labels(rpc=label).observe(time.perf_counter() - access.t0)
            access.done(code)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: `python -m serving` owns SIGTERM (the drain)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HttpFront:
    def __init__(self, server):
        self.server = server
        self.created = int(time.time())
        routes = [Route("/", self.playground), Route("/health", self.health),
                  Route("/v1/models", self.models), Route("/v1/completions", self.completions, methods=["POST"]),
                  Mount("/playground", StaticFiles(directory=PLAYGROUND), name="playground")]
        app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
        self.app = Gate(app, server)
        self._uv: _Uvicorn | None = None
        self._task: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> int:
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without
        # it each SSE chunk waits out the client's delayed ACK (~40 ms) behind Nagle's algorithm.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise UserError(f"--http-port {port}: cannot listen on {host}:{port} ({e.strerror}); "
                            "pick another port, or -1 for no HTTP") from None
        config = uvicorn.Config(self.app, http="h11", ws="none", lifespan="off", log_config=None,
                                access_log=False, timeout_graceful_shutdown=2, **uvicorn_ssl(self.server.config))
        config.load()
        self._uv = _Uvicorn(config)
        self._task = asyncio.create_task(self._uv.serve(sockets=[sock]))
        while not self._uv.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        return sock.getsockname()[1]

    async def stop(self) -> None:
        if self._uv and self._task:
            self._uv.should_exit = True
            await self._task

    # ---- routes ---------------------------------------------------------------------------
    async def playground(self, request: HttpRequest) -> Response:
        return FileResponse(PLAYGROUND / "index.html")

    async def health(self, request: HttpRequest) -> Response:
        ok = self.server.serving
        return JSONResponse({"status": "SERVING" if ok else "NOT_SERVING"}, status_code=200 if ok else 503)

    async def models(self, request: HttpRequest) -> Response:
        card = self.server.card
        return JSONResponse({"object": "list", "data": [{
            "id": card.name, "object": "model", "created": self.created, "owned_by": "shelley",
            "context_length": card.context_length, "max_new_tokens": card.max_new_tokens}]})

    async def completions(self, request: HttpRequest) -> Response:
        access: Access = request.state.access
        try:
            c = oa.parse_completion(await _json_body(request))
            req = self.server.submit(c.prompt, c.params)
        except Exception as e:
            return error_response(e)
        meta = (access.request_id, self.server.card.name, int(time.time()))
        if c.stream:
            return StreamingResponse(self._sse(request, req, c, meta), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        watch = asyncio.create_task(_cancel_on_disconnect(request, req))
        try:
            text, lps = [], []
            async for ev in self.server.events(req, access):
                text.append(ev.text)
                lps.extend(ev.logprobs or [])
        finally:
            watch.cancel()
        lp = openai_logprobs(lps, self.server.artifact.tokens, 0) if c.params.logprobs is not None else None
        return JSONResponse(oa.completion(*meta, "".join(text), ev.finish_reason, lp,
                                          oa.usage(ev.prompt_tokens, ev.completion_tokens)))

    async def _sse(self, request: HttpRequest, req, c: oa.Completion, meta: tuple):
        """Server-sent events: one chunk per engine event, [usage], [DONE]."""
        sent, finished = 0, False
        try:
            async for ev in self.server.events(req, request.state.access):
                lp = None if ev.logprobs is None else openai_logprobs(ev.logprobs, self.server.artifact.tokens, sent)
                sent += len(ev.text)
                finished = bool(ev.finish_reason)
                yield _sse(oa.chunk(*meta, ev.text, ev.finish_reason, lp, c.include_usage))
            if c.include_usage:
                yield _sse(oa.usage_chunk(*meta, oa.usage(ev.prompt_tokens, ev.completion_tokens)))
            yield "data: [DONE]\n\n"
        except EngineFailed as e:   # the 200 is sent: say in the stream why it ends (as vLLM does)
            finished = True
            _, kind, code = _error_of(e)
            yield _sse(oa.error_body(str(e), kind, None, code))
        finally:
            request.state.client_gone = not finished   # Starlette cancelled us: the client left


async def _http_exception(request: HttpRequest, e: HTTPException) -> Response:
    return error_response(e)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _json_body(request: HttpRequest):
    too_large = BodyTooLarge(f"the request body is over the limit of {MAX_BODY_BYTES} bytes; "
                             "send a shorter prompt")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large   # answered before a byte of it is read
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply to parse; send a flat JSON object") from None
    except ValueError as e:   # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise InvalidRequest(f"the body is not valid JSON: {e}") from None


async def _cancel_on_disconnect(request: HttpRequest, req) -> None:
    """Wait for the client to hang up while a whole (non-streamed) completion is made."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    request.state.client_gone = True
    req.cancel()
