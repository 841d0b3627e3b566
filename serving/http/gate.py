"""What every HTTP API request passes through: the gate (request id, API key, metrics, the
access line) and the body's size and JSON.

    app = Gate(starlette_app, server)      # ASGI middleware over /v1/*, /tokenize, /detokenize
    body = await json_body(request)        # BodyTooLarge (413) over 1 MiB, InvalidRequest (400)

A body over the limit gets its 413 at once; the rest of the upload is then read and dropped
(bounded, `DiscardingResponse`), so the client reads the answer instead of a reset connection.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time

from starlette.datastructures import Headers
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse

from core.errors import InvalidRequest
from serving.auth import key_ok
from serving.logs import Access, request_id
from serving.http.completions import error_body

MAX_BODY_BYTES = 1 << 20          # as gRPC's message limit
DISCARD_BYTES, DISCARD_SECONDS = 64 << 20, 10.0   # how much of an oversized upload is read and dropped
GUARDED = ("/v1/", "/tokenize", "/detokenize")    # behind the key: the API, not the page or health
ROUTES = ("POST /v1/completions", "POST /v1/chat/completions", "POST /v1/responses", "POST /v1/embeddings",
          "GET /v1/models", "POST /tokenize", "POST /detokenize")


class BodyTooLarge(Exception):
    """A request body over MAX_BODY_BYTES -> 413."""


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
    body = error_body("missing or wrong API key: send the header `Authorization: Bearer KEY`",
                         "invalid_request_error", None, "invalid_api_key")
    return JSONResponse(body, status_code=401, headers={"www-authenticate": "Bearer"})


class Gate:
    """ASGI middleware for the API routes (GUARDED): request id, API key, metrics, one access line."""

    def __init__(self, app, server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(GUARDED):
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


async def json_body(request: HttpRequest):
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
