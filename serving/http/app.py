"""The HTTP front door: OpenAI-compatible completions and chat, tokenize, /health and the
playground page, a Starlette app under uvicorn on the gRPC server's event loop, over the
same engine.

    front = HttpFront(server)                    # server: serving.server.Server
    port = await front.start("0.0.0.0", 8000)   # 0 = an ephemeral port; TLS from the config
    await front.stop()                           # after the drain: running streams have ended

    POST /v1/completions        {"prompt": "ROMEO:", "max_tokens": 50, "stream": true, "logprobs": 3}
    POST /v1/chat/completions   {"messages": [{"role": "user", "content": "Good morrow."}], "n": 2}
    POST /v1/responses          {"input": "Good morrow.", "instructions": "...", "stream": true}
    POST /v1/embeddings         {"input": ["Good morrow.", [12, 7, 40]], "encoding_format": "base64"}
    POST /tokenize {"prompt": ...} or {"messages": ...}      POST /detokenize {"tokens": [...]}
    GET  /v1/models        GET /health (200 SERVING, else 503)        GET / (the playground)

One gate middleware (serving/http/gate.py) sees every API request: its request id
(`x-request-id` in and out), the API key, the metrics and the access line. Exceptions become
statuses in one table (`STATUS`) and errors take OpenAI's shape in one place
(`error_response`), `param` taken from the exception. Completions and chat share one answer
path (`_answer`, `_sse`), and responses (serving/http/responses.py) its whole answer too, its
stream of typed events in `_typed_sse`; embeddings (serving/http/embeddings.py) run in
serving/embed.py, off the engine; their shapes (serving/http/completions.py, serving/http/chat_completions.py) say
what each chunk looks like. A client that disconnects cancels its request: its rows are
freed at the next step.
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
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from core.errors import EngineFailed, InvalidRequest, QueueFull, ShuttingDown, UserError
from serving.http import completions as oa
from serving.auth import uvicorn_ssl
from serving.http.gate import MAX_BODY_BYTES, BodyTooLarge, DiscardingResponse, Gate, json_body  # noqa: F401
from serving.logs import Access
from serving.http.chat_completions import ChatShape, parse_chat
from serving.embed import Embedder
from serving.http.embeddings import embeddings_body, parse_embeddings
from serving.http.responses import ResponseShape, parse_response
from serving.tokenize import detokenize, tokenize

log = logging.getLogger("shelley.http")
PLAYGROUND = Path(__file__).resolve().parent / "playground"


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
                  Route("/v1/chat/completions", self.chat, methods=["POST"]),
                  Route("/v1/responses", self.responses, methods=["POST"]),
                  Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                  Route("/tokenize", self.tokenize, methods=["POST"]),
                  Route("/detokenize", self.detokenize, methods=["POST"]),
                  Mount("/playground", StaticFiles(directory=PLAYGROUND), name="playground")]
        app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
        self.app = Gate(app, server)
        self.embedder = Embedder(server.artifact)   # embed.onnx, loaded at the first request
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
            "context_length": card.context_length, "max_new_tokens": card.max_new_tokens,
            "chat_template": card.chat_template, "chat_stop": list(card.chat_stop),
            "chat_speakers": list(card.chat_speakers)}]})

    async def completions(self, request: HttpRequest) -> Response:
        access: Access = request.state.access
        try:
            c = oa.parse_completion(await json_body(request), self.server.shaper)
            req = self.server.submit(c.prompt, c.params)
        except Exception as e:
            return error_response(e)
        meta = oa.Meta(access.request_id, self.server.card.name, int(time.time()))
        return await self._answer(request, req, oa.CompletionShape(meta, c, req.prompt_ids, self.server.artifact.tokens),
                                  c.stream, c.include_usage)

    async def chat(self, request: HttpRequest) -> Response:
        access: Access = request.state.access
        try:
            c = parse_chat(await json_body(request), self.server.shaper)
            req = self.server.submit(c.prompt, c.params, param="messages")
        except Exception as e:
            return error_response(e)
        meta = oa.Meta("chatcmpl-" + access.request_id.removeprefix("cmpl-"), self.server.card.name, int(time.time()))
        return await self._answer(request, req, ChatShape(meta, c, self.server.artifact.tokens),
                                  c.stream, c.include_usage)

    async def responses(self, request: HttpRequest) -> Response:
        access: Access = request.state.access
        try:
            r = parse_response(await json_body(request), self.server.card.max_new_tokens)
            s = self.server.shaper.chat(r.messages, r.kwargs, r.fields, response_format=r.response_format,
                                        tools=r.tools, format_param="text.format", param="input")
            req = self.server.submit(s.prompt, s.params, param=s.param)
        except Exception as e:
            return error_response(e)
        meta = oa.Meta("resp_" + access.request_id.removeprefix("cmpl-"), self.server.card.name, int(time.time()))
        shape = ResponseShape(meta, r, self.server.artifact.tokens, req.prompt_tokens)
        if r.stream:
            return StreamingResponse(self._typed_sse(request, req, shape), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        return await self._answer(request, req, shape, False, False)

    async def embeddings(self, request: HttpRequest) -> Response:
        card, access = self.server.card, request.state.access
        try:
            e = parse_embeddings(await json_body(request), self.server.artifact.tokenizer, card.context_length,
                                 card.vocab_size, self.server.artifact.config.model.n_embd)
            if not self.server.serving:
                raise ShuttingDown(self.server.phase.value)
            vectors = await asyncio.to_thread(self.embedder.embed, e.rows)   # one core, off the event loop
        except Exception as ex:
            return error_response(ex)
        access.prompt_tokens = e.tokens
        return JSONResponse(embeddings_body(vectors, e, card.name))

    async def tokenize(self, request: HttpRequest) -> Response:
        try:
            return JSONResponse(tokenize(self.server, await json_body(request)))
        except Exception as e:
            return error_response(e)

    async def detokenize(self, request: HttpRequest) -> Response:
        try:
            return JSONResponse(detokenize(self.server, await json_body(request)))
        except Exception as e:
            return error_response(e)

    async def _answer(self, request: HttpRequest, req, shape, stream: bool, include_usage: bool) -> Response:
        if stream:
            return StreamingResponse(self._sse(request, req, shape, include_usage), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        watch = asyncio.create_task(_cancel_on_disconnect(request, req))
        try:
            choices = {i: oa.Gathered() for i in range(len(req.choices))}
            async for ev in self.server.events(req, request.state.access):
                choices[ev.index].add(ev)
        finally:
            watch.cancel()
        done = sum(g.completion_tokens for g in choices.values())
        cached = max(g.cached_tokens for g in choices.values())   # the first choice's (the others copy its prompt)
        return JSONResponse(shape.whole(choices, oa.usage(req.prompt_tokens, done, cached)))

    async def _sse(self, request: HttpRequest, req, shape, include_usage: bool):
        """Server-sent events: [a first chunk per choice (chat)], one chunk per engine event,
        [usage], [DONE]."""
        left, done, cached = len(req.choices), 0, 0
        try:
            for first in shape.start():
                yield _sse(first)
            async for ev in self.server.events(req, request.state.access):
                if ev.finish_reason:
                    left, done, cached = left - 1, done + ev.completion_tokens, max(cached, ev.cached_tokens)
                for chunk in shape.chunks(ev):
                    yield _sse(chunk)
            if include_usage:
                yield _sse(shape.usage_chunk(oa.usage(req.prompt_tokens, done, cached)))
            yield "data: [DONE]\n\n"
        except EngineFailed as e:   # the 200 is sent: say in the stream why it ends (as vLLM does)
            left = 0
            _, kind, code = _error_of(e)
            yield _sse(oa.error_body(str(e), kind, None, code))
        finally:
            request.state.client_gone = left > 0   # Starlette cancelled us: the client left


    async def _typed_sse(self, request: HttpRequest, req, shape):
        """A Responses stream: typed events (`event: TYPE` + `data: {...}`), no [DONE]."""
        left = 1
        try:
            for ev in shape.opening():
                yield _typed(ev)
            async for ev in self.server.events(req, request.state.access):
                left -= bool(ev.finish_reason)
                for out in shape.chunk(ev):
                    yield _typed(out)
            for ev in shape.closing():
                yield _typed(ev)
        except EngineFailed as e:
            left = 0
            _, kind, code = _error_of(e)
            yield _typed(shape.event("error", code=code or kind, message=str(e), param=None))
        finally:
            request.state.client_gone = left > 0


async def _http_exception(request: HttpRequest, e: HTTPException) -> Response:
    return error_response(e)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _typed(obj: dict) -> str:
    return f"event: {obj['type']}\n{_sse(obj)}"


async def _cancel_on_disconnect(request: HttpRequest, req) -> None:
    """Wait for the client to hang up while a whole (non-streamed) completion is made."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    request.state.client_gone = True
    req.cancel()
