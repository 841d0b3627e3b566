"""Log lines, request ids and the access log: one line per API request, in text or JSON.

    setup_logging("info", "json")            # --log-format json: every line one JSON object
    rid = request_id(client_value)            # the client's x-request-id if sane, else new
    access = Access(rid, "http", "POST /v1/completions")
    access.saw(event)                         # first token time, usage, finish reason
    access.done("200")                        # -> one line: id, API, tokens, finish, TTFT, duration, status

Both front doors (gRPC's `rpc` wrapper, HTTP's gate middleware) write the access line, so
it reads the same whatever the client spoke. Prompts, completions and keys are never logged.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ACCESS = logging.getLogger("shelley.access")
# A client's id is echoed into logs and headers: short, printable, no spaces or quotes.
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def request_id(given: str | None = None) -> str:
    """The client's id when it is a sane token, else a fresh one (OpenAI-style `cmpl-...`)."""
    if given and _SANE_ID.fullmatch(given):
        return given
    return "cmpl-" + uuid.uuid4().hex


def _value(v) -> str:
    if v is None:
        return "-"
    s = str(v)   # quoted when it has spaces or anything unprintable: one line stays one line
    return json.dumps(s) if not s or " " in s or '"' in s or not s.isprintable() else s


class TextFormatter(logging.Formatter):
    """The usual line, with a record's structured `fields` appended as key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        return line + "".join(f" {k}={_value(v)}" for k, v in fields.items()) if fields else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Route every logger (ours, uvicorn's, grpc's Python side) to stderr in one format.

    gRPC's C core writes its own lines; for JSON its chatter (e.g. each failed TLS
    handshake) is kept down to errors, if grpc has not started yet and GRPC_VERBOSITY is unset.
    """
    if fmt == "json":
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@dataclass
class Access:
    """What one request did, written as one access-log line when it ends."""
    request_id: str
    api: str                       # "grpc" or "http"
    method: str                    # "Generate", "POST /v1/completions", ...
    t0: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""        # "" when the request ended without finishing (error, client gone)
    ttft: float | None = None
    tokens: dict = field(default_factory=dict)   # choice index -> its tokens so far (n > 1)

    def saw(self, event) -> None:
        """Take in one engine Event (or a merged run of them), of any of the request's choices."""
        if self.ttft is None and event.token_ids:
            self.ttft = time.perf_counter() - self.t0
        i = event.index
        self.tokens[i] = self.tokens.get(i, 0) + len(event.token_ids)   # so far; the last event has the count
        if event.finish_reason:
            self.finish_reason = event.finish_reason
            self.prompt_tokens, self.tokens[i] = event.prompt_tokens, event.completion_tokens
        self.completion_tokens = sum(self.tokens.values())

    def done(self, status: str) -> None:
        ms = lambda s: None if s is None else round(1000 * s, 2)  # noqa: E731
        fields = {"request_id": self.request_id, "api": self.api, "method": self.method, "status": status,
                  "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                  "finish_reason": self.finish_reason or None, "ttft_ms": ms(self.ttft),
                  "duration_ms": ms(time.perf_counter() - self.t0)}
        _ACCESS.info("request", extra={"fields": fields})
