"""`python -m serving --model ART`: verify the artifact, serve it, drain on SIGTERM.

Flags and SHELLEY_* env vars: serving/config.py. Exit 0 after a drain, 2 on a user error,
1 when the engine failed (health already NOT_SERVING; a supervisor restarts the process).
The artifact (its hashes, and the file `--precision` picks) is checked before any port
opens; a failure while loading closes the ports before the one-line error.
"""
from __future__ import annotations

import asyncio
import logging
import signal

from core.errors import run_main


async def serve(cfg) -> int:
    from core.artifact import load_artifact
    from serving.server import Server

    artifact = load_artifact(cfg.model)     # hashes first: never serve a torn copy
    artifact.onnx_path(cfg.precision)       # the precision's file too, before any port opens
    server = Server(cfg, artifact)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        await server.load()
    except BaseException:   # close what is open first: the error is then the only thing said
        await server.drain()
        raise
    signalled, failed = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.failed.wait())
    await asyncio.wait([signalled, failed], return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel(), failed.cancel()
    log = logging.getLogger("shelley.server")
    if server.failed.is_set():   # requests already ended with errors; exit so Kubernetes restarts us
        log.error("exiting with status 1: the engine failed")
        await server.drain()
        return 1
    log.info("signal received: draining for up to %.0f s", cfg.drain_seconds)
    await server.drain()
    return 0


def main(argv: list[str] | None = None) -> int:
    from serving.config import parse_args
    from serving.logs import setup_logging
    cfg = parse_args(argv)
    setup_logging(cfg.log_level, cfg.log_format)
    return asyncio.run(serve(cfg))


if __name__ == "__main__":
    run_main(main)
