"""Errors the server maps to gRPC status codes (in server.py, one place), plus the CLI's.

Kept free of grpc so the engine and artifact loader can raise them without importing it.
"""
from __future__ import annotations


class UserError(Exception):
    """A command-line mistake the user can fix: printed as one line, exit 2."""


class InvalidRequest(Exception):
    """A bad field in a request -> INVALID_ARGUMENT; the message names the field and limit."""


class QueueFull(Exception):
    """The waiting queue is at --max-queue -> RESOURCE_EXHAUSTED."""


class ShuttingDown(Exception):
    """The server is draining after SIGTERM (or not ready yet) -> UNAVAILABLE."""
