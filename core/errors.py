"""The errors every stage raises, and how a command line reports them.

    raise UserError("no model artifact dir at X; export one with ...")   # CLI: one line, exit 2
    raise InvalidRequest("max_tokens must be between 1 and 1024, got 0", param="max_tokens")
    run_main(main)                                                        # an entry point's wrapper

The server's front doors turn the request errors into status codes, each protocol in one
table (serving/grpc/api.py, serving/http/app.py). No grpc, no torch here.
"""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A command-line mistake the user can fix: printed as one line, exit 2."""


class InvalidRequest(Exception):
    """A bad field in a request -> INVALID_ARGUMENT / HTTP 400. The message names the field
    and its limit; `param` is the field's name (OpenAI's `error.param`), None for the body."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class QueueFull(Exception):
    """The waiting queue is at --max-queue -> RESOURCE_EXHAUSTED / 429."""


class ShuttingDown(Exception):
    """The server is loading, draining after SIGTERM, or failed -> UNAVAILABLE / 503."""


class EngineFailed(Exception):
    """The engine thread died under this request -> INTERNAL once tokens were sent (the
    stream is broken), else UNAVAILABLE (safe to retry on another replica)."""

    def __init__(self, started: bool):
        super().__init__("the model engine failed; the server is restarting" +
                         ("" if started else ", retry on another replica"))
        self.started = started


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run an entry point: a UserError is one line on stderr and exit 2, no traceback."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
