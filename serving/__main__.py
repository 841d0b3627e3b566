"""`python -m serving --model ART`: verify the artifact, serve it, drain on SIGTERM.

Flags and SHELLEY_* env vars: serving/config.py. Exit 0 after a drain, 2 on a user error.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys

from serving.errors import UserError


async def serve(cfg) -> int:
    from serving.artifact import load_artifact
    from serving.server import Server

    artifact = load_artifact(cfg.model)     # hashes first: never serve a torn copy
    server = Server(cfg, artifact)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await server.load()
    await stop.wait()
    logging.getLogger("shelley.server").info("signal received: draining for up to %.0f s", cfg.drain_seconds)
    await server.drain()
    return 0


def main(argv: list[str] | None = None) -> int:
    from serving.config import parse_args
    from serving.logs import setup_logging
    cfg = parse_args(argv)
    setup_logging(cfg.log_level, cfg.log_format)
    return asyncio.run(serve(cfg))


def run_main(fn, argv: list[str] | None = None) -> None:
    """One line and exit 2 for user errors; no traceback (training.cli's twin, torch-free)."""
    try:
        code = fn(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)


if __name__ == "__main__":
    run_main(main)
