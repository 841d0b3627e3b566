"""Command-line client: stream a completion to stdout.

    python -m serving.client "ROMEO:" [--target localhost:50051] [--max-tokens N]
        [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop STR]... [--complete] [--info]

Exit 2 with one line when the server refuses the request or cannot be reached.
"""
from __future__ import annotations

import argparse
import sys

import grpc

from serving.errors import UserError, run_main


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
    p.add_argument("--complete", action="store_true", help="one unary Complete call instead of streaming")
    p.add_argument("--info", action="store_true", help="print the model info and exit")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds")
    return p.parse_args(argv)


def build_request(args: argparse.Namespace):
    from serving.proto import pb
    req = pb.GenerateRequest(prompt=args.prompt, top_k=args.top_k, stop=args.stop)
    for field in ("max_tokens", "temperature", "top_p", "seed"):
        if getattr(args, field) is not None:
            setattr(req, field, getattr(args, field))
    return req


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from serving.proto import pb, pb_grpc
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        try:
            if args.info:
                print(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=args.timeout))
                return 0
            req = build_request(args)
            if args.complete:
                r = stub.Complete(req, timeout=args.timeout)
                sys.stdout.write(args.prompt + r.text + "\n")
                last = r
            else:
                for i, last in enumerate(stub.Generate(req, timeout=args.timeout)):
                    sys.stdout.write(last.text if i else args.prompt + last.text)
                    sys.stdout.flush()
                sys.stdout.write("\n")
            print(f"[{last.finish_reason}; {last.usage.prompt_tokens} prompt + "
                  f"{last.usage.completion_tokens} completion tokens]", file=sys.stderr)
        except grpc.RpcError as e:
            raise UserError(f"{args.target}: {e.code().name}: {e.details()}") from None
    return 0


if __name__ == "__main__":
    run_main(main)
