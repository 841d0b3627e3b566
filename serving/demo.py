"""`make demo`: train the small CPU preset, export it, serve it, stream one completion, stop.

    python -m serving.demo [--run runs/default] [--art artifacts/default] [--prompt "ROMEO:"]

Each stage is the user-facing command (`python -m training.train`, `python -m export`,
`python -m serving`, `python -m serving.client`); a stage whose output already exists is
skipped, so a second `make demo` only serves.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.artifact import MANIFEST_NAME
from core.errors import UserError, run_main
from core.net import free_port
from core.run_dir import is_run
from serving import client


def step(title: str, cmd: list[str]) -> None:
    print(f"\n== {title}: {' '.join(cmd)}", flush=True)
    if subprocess.call(cmd) != 0:
        raise UserError(f"{title} failed (see above); fix it and run `make demo` again")


def wait_serving(target: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise UserError(f"the server exited with status {proc.returncode} (see above)")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise UserError(f"the server did not report SERVING within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.demo", description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/default")
    p.add_argument("--art", default="artifacts/default")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--prompt", default="ROMEO:")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--train-args", default="", help="extra training flags, e.g. '--max-iters 200'")
    args = p.parse_args(argv)
    py = sys.executable
    if not is_run(args.run):
        step("train", [py, "-m", "training.train", "--preset", args.preset, "--corpus", args.corpus,
                       "--out", args.run, *args.train_args.split()])
    if not (Path(args.art) / MANIFEST_NAME).is_file():
        step("export", [py, "-m", "export", "--run", args.run, "--out", args.art])
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    target = f"127.0.0.1:{port}"
    cmd = [py, "-m", "serving", "--model", args.art, "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", str(metrics_port), "--http-port", str(http_port), "--drain-seconds", "5"]
    print(f"\n== serve: {' '.join(cmd)}", flush=True)
    server = subprocess.Popen(cmd)
    try:
        wait_serving(target, server)
        print(f"\n== stream: python -m serving.client {args.prompt!r} --target {target}\n", flush=True)
        client.main([args.prompt, "--target", target, "--max-tokens", str(args.max_tokens),
                     "--temperature", "0.8", "--seed", "1"])
        print(f"\n(metrics were at http://127.0.0.1:{metrics_port}/metrics, the playground at "
              f"http://127.0.0.1:{http_port}/; `make serve` keeps them up)")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
    print(f"== server stopped with SIGTERM, exit status {code}")
    return code


if __name__ == "__main__":
    run_main(main)
