"""Errors the server maps to gRPC status codes (in server.py, one place), plus the CLI's.

Kept free of grpc (and torch) so the engine, the artifact loader and every stage's command
line (training.cli imports `UserError` and `run_main` from here) can use them.
"""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A command-line mistake the user can fix: printed as one line, exit 2."""


class InvalidRequest(Exception):
    """A bad field in a request -> INVALID_ARGUMENT; the message names the field and limit."""


class QueueFull(Exception):
    """The waiting queue is at --max-queue -> RESOURCE_EXHAUSTED."""


class ShuttingDown(Exception):
    """The server is draining after SIGTERM (or not ready yet) -> UNAVAILABLE."""


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
