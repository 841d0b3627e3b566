"""Who may call: API keys on both front doors, and TLS for both ports.

    keys = load_keys(config)                  # --api-key, --api-key-file lines; () = no key needed
    key_ok(keys, "Bearer sk-1")               # constant time, over every key
    grpc.aio.server(interceptors=[ApiKeyInterceptor(keys, metrics)])   # guards TextGeneration only
    creds = grpc_credentials(config)          # None = plaintext; with --tls-client-ca, mTLS
    uvicorn.Config(app, **uvicorn_ssl(config))

Health, reflection and the metrics port stay open, so probes and scrapes need no secret.
Keys are compared with hmac.compare_digest and never logged.
"""
from __future__ import annotations

import hmac
import ssl
from pathlib import Path

import grpc

from core.errors import UserError
from serving.logs import Access, request_id

GUARDED = "/shelley.v1.TextGeneration/"


def load_keys(config) -> tuple[str, ...]:
    """Every accepted key: --api-key plus the non-empty, non-# lines of --api-key-file."""
    keys = [config.api_key.strip()] if config.api_key.strip() else []
    if config.api_key_file:
        lines = Path(config.api_key_file).read_text().splitlines()
        found = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not found:
            raise UserError(f"--api-key-file {config.api_key_file} has no keys; put one key per line")
        keys += found
    return tuple(keys)


def key_ok(keys: tuple[str, ...], authorization: str | None) -> bool:
    """True when no key is configured, or the header is `Bearer <one of the keys>`."""
    if not keys:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    ok = False
    for key in keys:   # no early exit: the time does not say which key nearly matched
        ok |= hmac.compare_digest(given.strip().encode(), key.encode())
    return ok and scheme.lower() == "bearer"


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuse TextGeneration calls without `authorization: Bearer KEY` (UNAUTHENTICATED)."""

    def __init__(self, keys: tuple[str, ...], metrics=None):
        self.keys, self.metrics = keys, metrics

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if not self.keys or handler is None or not details.method.startswith(GUARDED):
            return handler
        metadata = dict(details.invocation_metadata or ())
        if key_ok(self.keys, metadata.get("authorization")):
            return handler
        name = details.method.rsplit("/", 1)[-1]
        rid = request_id(metadata.get("x-request-id"))

        async def deny(request, context):
            await context.send_initial_metadata((("x-request-id", rid),))
            Access(rid, "grpc", name).done("UNAUTHENTICATED")
            if self.metrics:
                self.metrics.requests.labels(rpc=name, code="UNAUTHENTICATED").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or wrong API key: send metadata `authorization: Bearer KEY`")

        make = grpc.unary_stream_rpc_method_handler if handler.response_streaming \
            else grpc.unary_unary_rpc_method_handler
        return make(deny, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


def grpc_credentials(config) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=ca, require_client_auth=ca is not None)


def uvicorn_ssl(config) -> dict:
    """uvicorn's TLS settings; --tls-client-ca requires client certificates here too, so
    the HTTP port is no way around mTLS."""
    if not config.tls_cert:
        return {}
    out = {"ssl_certfile": config.tls_cert, "ssl_keyfile": config.tls_key}
    if config.tls_client_ca:
        out.update(ssl_ca_certs=config.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return out


def check_tls_files(config) -> None:
    """Load the certificate and key once, so a bad pair is a one-line error at start."""
    if not config.tls_cert:
        return
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            ctx.load_verify_locations(config.tls_client_ca)
    except (ssl.SSLError, OSError) as e:
        raise UserError(f"--tls-cert/--tls-key/--tls-client-ca cannot be loaded: {e}; "
                        "pass a PEM certificate and its matching private key") from None
