"""Soak: 48 mixed gRPC clients against one server for minutes; fails on anything unexpected.

    python -m bench.soak [--seconds 180] [--model trained|random]       # make bench-soak

48 clients against `--max-batch 32` (so a queue forms) mix normal streams (60%), streams
they cancel mid-way (15%), 50 ms deadlines (15%) and invalid requests (10%). It fails (exit
1) on any status code other than the expected ones, if `shelley_requests_running` /
`_waiting` do not return to 0, if the server's RSS grows more than 10% after warm-up, or if
the server does not exit 0 on SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script too
from bench.clients import Tally, grpc_stream_once  # noqa: E402
from bench.load import rss_mb, start_server  # noqa: E402

SOAK_EXPECTED = {"OK", "CANCELLED (by the client)", "DEADLINE_EXCEEDED", "INVALID_ARGUMENT"}


async def soak_clients(target: str, seconds: float, clients: int, prompt: str, seed: int = 0) -> Tally:
    """Each client loops over a random mix: a normal stream (60%), one it cancels mid-way
    (15%), one with a 50 ms deadline (15%), an invalid request (10%)."""
    import grpc

    from serving.grpc.proto import pb, pb_grpc

    tally, rng = Tally(), random.Random(seed)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.TextGenerationStub(ch)
        end = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < end:
                kind, n = rng.random(), rng.randint(16, 160)
                req = pb.GenerateRequest(prompt=prompt[: rng.randint(1, len(prompt))], max_tokens=n,
                                         temperature=rng.choice([0.0, 0.8]), ignore_eos=True)
                if kind < 0.60:
                    await grpc_stream_once(stub, req, tally)
                elif kind < 0.75:
                    await grpc_stream_once(stub, req, tally, cancel_after=rng.randint(1, 8))
                elif kind < 0.90:
                    await grpc_stream_once(stub, req, tally, timeout=0.05)
                else:
                    bad = rng.choice([dict(max_tokens=0), dict(top_p=2.0), dict(temperature=-1.0)])
                    await grpc_stream_once(stub, pb.GenerateRequest(prompt=prompt[:8], **bad), tally)
        await asyncio.gather(*(client() for _ in range(clients)))
    return tally


def soak(args, art: Path, prompt: str) -> int:
    extra = ["--max-batch", "32", *args.server_args.split()]
    proc, target, metrics_port = start_server(art, extra)
    rss, start = [], time.perf_counter()
    try:
        async def run() -> Tally:
            task = asyncio.ensure_future(soak_clients(target, args.seconds, 48, prompt))
            while not task.done():
                rss.append((time.perf_counter(), rss_mb(proc.pid)))
                await asyncio.sleep(1.0)
            return await task
        tally = asyncio.run(run())
        time.sleep(1.0)   # cancelled rows leave at the next step
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            scrape = r.read().decode()
        gauges = {name: float(line.split()[-1]) for line in scrape.splitlines()
                  for name in ("shelley_requests_running", "shelley_requests_waiting") if line.startswith(name + " ")}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    warm = [m for t, m in rss if t > start + min(30.0, args.seconds / 4)]   # after warm-up
    growth = warm[-1] / warm[0] - 1 if len(warm) > 1 else float("nan")
    unexpected = {c: k for c, k in tally.codes.items() if c not in SOAK_EXPECTED}
    print(f"\nsoak: 48 clients, {args.seconds:.0f} s, --max-batch 32; load {os.getloadavg()[0]:.1f}")
    print("| status | calls |\n| --- | ---: |")
    for c, k in sorted(tally.codes.items()):
        print(f"| {c} | {k} |")
    print(f"\ntokens streamed {tally.tokens:,}; gauges after: {gauges}; server RSS after warm-up "
          f"{warm[0] if warm else float('nan'):.0f} -> {warm[-1] if warm else float('nan'):.0f} MB ({growth:+.1%}); "
          f"server exit status after SIGTERM {code}")
    ok = (not unexpected and gauges == {"shelley_requests_running": 0.0, "shelley_requests_waiting": 0.0}
          and growth <= 0.10 and code == 0)
    print("soak: " + ("ok" if ok else f"FAILED (unexpected codes {unexpected})" if unexpected else "FAILED"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--model", default="trained", choices=("trained", "random"), help="bench/models.py")
    p.add_argument("--server-args", default="", help="extra flags for python -m serving")
    args = p.parse_args(argv)
    from bench.models import bench_model
    model = bench_model(args.model)
    return soak(args, model.onnx, model.prompts(64, 1)[0])


if __name__ == "__main__":
    sys.exit(main())
