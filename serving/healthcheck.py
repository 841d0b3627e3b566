"""Ask a shelley server's gRPC health service whether it is SERVING; exit 0 if so, else 1.

The serving image's HEALTHCHECK runs it (Kubernetes uses its native gRPC probes instead):
    python -m serving.healthcheck [--target localhost:50051] [--service shelley.v1.TextGeneration]
It needs only grpcio and grpcio-health-checking, so it starts fast and runs in the image.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str, timeout: float) -> str:
    """The serving status name ("SERVING", "NOT_SERVING", ...) or the gRPC error code name."""
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as err:
        return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    port = os.environ.get("SHELLEY_PORT", "50051")
    parser = argparse.ArgumentParser(prog="python -m serving.healthcheck", description=__doc__)
    parser.add_argument("--target", default=f"localhost:{port}", help="server address (host:port)")
    parser.add_argument("--service", default="", help='health service name; "" = the whole server')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    status = check(args.target, args.service, args.timeout)
    print(f"{args.target} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
