"""What structured output costs: json_schema streams beside plain ones, in one run.

    python -m bench.structured                       # 32 streams (a quarter json_schema) and 1 stream
    python -m bench.structured --seconds 60 --rounds 3 --streams 32 --share 0.25
    python -m bench.structured --greedy              # the same at temperature 0

One shelley server (the bench model, bench/models.py: 3.7M parameters, BPE 2000, fp32,
--max-batch 64); every client sends back-to-back streamed /v1/completions of 64-token
held-out prompts, `ignore_eos`, 128 new tokens, at temperature 1.0 (what the API defaults to
and clients send; `--greedy`: temperature 0, where a row's draw is an argmax and the mask's
own cost shows most). Scenarios take turns in `--rounds` interleaved rounds so a burst of
load on a shared machine hits all alike:

    N plain             N streams, no response_format
    N mixed             the same, but every 1/share-th client asks for SCHEMA (json_schema)
    1 plain / 1 json    a lone stream of each

Reported: tokens/s of each scenario (usage's completion tokens: a JSON reply may end early
when its grammar is complete), the plain streams' own tokens/s in the mixed load, and the
ratios issue 27 sets targets for: mixed / plain >= 0.9, lone json / lone plain >= 0.8, plain
streams in the mixed load against the plain load (how much the masks cost rows that did not
ask for them).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script too
from bench.load import start_server  # noqa: E402
from bench.machine import describe_cpu  # noqa: E402
from bench.models import bench_model  # noqa: E402
from core.net import free_port  # noqa: E402

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["speeches"], "properties": {
    "speeches": {"type": "array", "minItems": 32, "items": {
        "type": "object", "additionalProperties": False, "required": ["speaker", "act", "line"],
        "properties": {"speaker": {"type": "string", "maxLength": 16},
                       "act": {"type": "integer", "minimum": 1, "maximum": 5},
                       "line": {"type": "string", "maxLength": 80}}}}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "scene", "schema": SCHEMA}}


async def streams(base: str, n: int, structured: set[int], seconds: float, prompts: list[str], new_tokens: int,
                  first: int, temperature: float) -> dict[str, list[int]]:
    """n clients for `seconds`; client i asks for FORMAT when i is in `structured`. Returns
    {"plain": [tokens, requests], "json": [...], "errors": [count]}."""
    import httpx

    out = {"plain": [0, 0], "json": [0, 0], "errors": [0]}
    end, turn = time.perf_counter() + seconds, iter(range(first, first + 10**9))

    async def client(i: int) -> None:
        kind = "json" if i in structured else "plain"
        body = {"max_tokens": new_tokens, "temperature": temperature, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}, **({"response_format": FORMAT} if kind == "json" else {})}
        async with httpx.AsyncClient(base_url=base, timeout=300) as http:
            while time.perf_counter() < end:
                used = None
                async with http.stream("POST", "/v1/completions",
                                       json={**body, "prompt": prompts[next(turn) % len(prompts)]}) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            used = json.loads(line[6:]).get("usage") or used
                if r.status_code != 200 or not used:
                    out["errors"][0] += 1
                    continue
                out[kind][0] += used["completion_tokens"]
                out[kind][1] += 1

    await asyncio.gather(*(client(i) for i in range(n)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--share", type=float, default=0.25, help="the mixed load's share of json_schema streams")
    p.add_argument("--seconds", type=float, default=60.0, help="per scenario, over all rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--server-args", default="--max-batch 64")
    p.add_argument("--greedy", action="store_true", help="temperature 0 instead of 1.0 (the mask's own cost, "
                                                         "without the sampler's draw)")
    args = p.parse_args(argv)
    model = bench_model("trained")
    prompts = model.prompts(64, 4000)
    http = free_port()
    proc, _, _ = start_server(model.onnx, [*args.server_args.split(), "--precision", "fp32"], http)
    base = f"http://127.0.0.1:{http}"
    n, every = args.streams, max(1, round(1 / args.share))
    temperature = 0.0 if args.greedy else 1.0
    scenarios = {f"{n} plain": (n, set()), f"{n} mixed": (n, set(range(0, n, every))),
                 "1 plain": (1, set()), "1 json": (1, {0})}
    done = {s: {"plain": [0, 0], "json": [0, 0], "errors": [0], "wall": 0.0} for s in scenarios}
    try:
        for r in range(args.rounds):
            order = list(scenarios) if r % 2 == 0 else list(scenarios)[::-1]
            for i, s in enumerate(order):
                t0 = time.perf_counter()
                got = asyncio.run(streams(base, *scenarios[s], args.seconds / args.rounds, prompts, args.new_tokens,
                                          first=(r * len(scenarios) + i) * 200, temperature=temperature))
                done[s]["wall"] += time.perf_counter() - t0
                for k in ("plain", "json", "errors"):
                    done[s][k] = [a + b for a, b in zip(done[s][k], got[k])]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\n`python -m bench.structured {' '.join(argv if argv is not None else sys.argv[1:])}`, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {describe_cpu()}, commit {commit}; bench model "
          f"(3.7M, BPE 2000) fp32, 64-token prompts, {args.new_tokens} new tokens, "
          f"{'greedy' if args.greedy else 'temperature 1.0'}, ignore_eos; "
          f"{args.seconds:.0f} s per scenario in {args.rounds} rounds; load {os.getloadavg()[0]:.1f} at the end\n")
    rate = {s: (d["plain"][0] + d["json"][0]) / d["wall"] for s, d in done.items()}
    print("| scenario | tokens/s | plain streams' tokens/s | json streams' tokens/s | requests (plain / json) | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s, d in done.items():
        print(f"| {s} | {rate[s]:,.0f} | {d['plain'][0] / d['wall']:,.0f} | {d['json'][0] / d['wall']:,.0f} "
              f"| {d['plain'][1]} / {d['json'][1]} | {d['errors'][0]} |")
    mixed, plain = done[f"{n} mixed"], done[f"{n} plain"]
    per_plain_stream = (mixed["plain"][0] / mixed["wall"] / (n - len(scenarios[f"{n} mixed"][1]))) / \
        (plain["plain"][0] / plain["wall"] / n)
    print(f"\n{n} mixed / {n} plain: {rate[f'{n} mixed'] / rate[f'{n} plain']:.2f}x (target >= 0.9); "
          f"1 json / 1 plain: {rate['1 json'] / rate['1 plain']:.2f}x (target >= 0.8); "
          f"a plain stream in the mixed load / in the plain load: {per_plain_stream:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
