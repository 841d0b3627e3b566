"""Container health probe: exit 0 when the local server reports SERVING, else 1.

    python -m serving.healthcheck [--target localhost:$SHELLEY_PORT] [--service NAME]

Used by Dockerfile.serve's HEALTHCHECK; Kubernetes probes call grpc.health.v1 natively.
"""
from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("--target", default=f"localhost:{os.environ.get('SHELLEY_PORT', '50051')}")
    p.add_argument("--service", default="", help='"" = the whole server, or shelley.v1.TextGeneration')
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    with grpc.insecure_channel(args.target) as channel:
        try:
            r = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"{args.target}: {e.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
    print(f"{args.target}: {status}")
    return 0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
