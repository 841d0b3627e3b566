"""The generated gRPC stubs, imported from serving/_gen/ (written by `make proto`).

protoc writes absolute imports (`from shelley.v1 import shelley_pb2`), so _gen/ goes on
sys.path. A missing _gen/ is a one-line error telling how to generate it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from core.errors import UserError

_GEN = Path(__file__).resolve().parent.parent / "_gen"
if not (_GEN / "shelley" / "v1" / "shelley_pb2_grpc.py").is_file():
    raise UserError(f"gRPC stubs missing in {_GEN}; run `make proto` first")
if str(_GEN) not in sys.path:
    sys.path.insert(0, str(_GEN))

from shelley.v1 import shelley_pb2 as pb  # noqa: E402
from shelley.v1 import shelley_pb2_grpc as pb_grpc  # noqa: E402

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TextGeneration"].full_name  # shelley.v1.TextGeneration

__all__ = ["pb", "pb_grpc", "SERVICE_NAME"]
