"""Command-line client: stream a completion to stdout.

    python -m serving.client "ROMEO:" [--target localhost:50051] [--max-tokens N]
        [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop STR]... [--complete] [--info]
        [--logprobs K] [--api-key KEY] [--tls-ca CA.pem [--tls-cert C.pem --tls-key K.pem]]

Exit 2 with one line when the server refuses the request or cannot be reached. The key
may come from SHELLEY_API_KEY instead of the command line (which `ps` shows).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

from core.errors import UserError, run_main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__.splitlines()[0])
    p.add_argument("prompt", nargs="?", default="")
    p.add_argument("--target", default="localhost:50051")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[])
    p.add_argument("--logprobs", type=int, help="print each token's probability and this many alternatives (0-5)")
    p.add_argument("--complete", action="store_true", help="one unary Complete call instead of streaming")
    p.add_argument("--info", action="store_true", help="print the model info and exit")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds")
    p.add_argument("--api-key", default=os.environ.get("SHELLEY_API_KEY", ""),
                   help="sent as `authorization: Bearer KEY` (default: env SHELLEY_API_KEY)")
    p.add_argument("--request-id", help="sent as x-request-id (default: the server makes one)")
    p.add_argument("--tls-ca", help="connect over TLS, trusting this CA (PEM); empty = the system's roots")
    p.add_argument("--tls-cert", help="client certificate (PEM) for a server that requires one (mTLS)")
    p.add_argument("--tls-key", help="the client certificate's private key (PEM)")
    return p.parse_args(argv)


def build_request(args: argparse.Namespace):
    from serving.grpc.proto import pb
    req = pb.GenerateRequest(prompt=args.prompt, top_k=args.top_k, stop=args.stop)
    for field in ("max_tokens", "temperature", "top_p", "seed", "logprobs"):
        if getattr(args, field) is not None:
            setattr(req, field, getattr(args, field))
    return req


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls_ca is None and not args.tls_cert:
        return grpc.insecure_channel(args.target)
    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    try:
        creds = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
    except OSError as e:
        raise UserError(f"cannot read a TLS file: {e}") from None
    return grpc.secure_channel(args.target, creds)


def metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    md = [("authorization", f"Bearer {args.api_key}")] if args.api_key else []
    return md + ([("x-request-id", args.request_id)] if args.request_id else [])


def print_logprobs(entries) -> None:
    """One line per token: its probability, then the alternatives (the model's, before sampling)."""
    from math import exp
    for e in entries:
        alts = "  ".join(f"{t.token!r} {100 * exp(t.logprob):.1f}%" for t in e.top)
        print(f"{e.token!r:>10} {100 * exp(e.logprob):6.1f}%   {alts}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from serving.grpc.proto import pb, pb_grpc
    with open_channel(args) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        md = metadata(args)
        try:
            if args.info:
                print(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=args.timeout, metadata=md))
                return 0
            req = build_request(args)
            if args.complete:
                r, call = stub.Complete.with_call(req, timeout=args.timeout, metadata=md)
                sys.stdout.write(args.prompt + r.text + "\n")
                last, entries = r, list(r.logprobs)
            else:
                call, entries = stub.Generate(req, timeout=args.timeout, metadata=md), []
                for i, last in enumerate(call):
                    sys.stdout.write(last.text if i else args.prompt + last.text)
                    sys.stdout.flush()
                    entries.extend(last.logprobs)
                sys.stdout.write("\n")
            print_logprobs(entries)
            rid = dict(call.initial_metadata()).get("x-request-id", "?")
            print(f"[{last.finish_reason}; {last.usage.prompt_tokens} prompt + "
                  f"{last.usage.completion_tokens} completion tokens; request {rid}]", file=sys.stderr)
        except grpc.RpcError as e:
            raise UserError(f"{args.target}: {e.code().name}: {e.details()}") from None
    return 0


if __name__ == "__main__":
    run_main(main)
