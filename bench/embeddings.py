"""Does /v1/embeddings slow decoding? Two servers on the same weights, in turns, in one run.

    .venv/bin/python bench/embeddings.py [--seconds 6] [--rounds 3] [--streams 1 8]

The bench model (bench/models.py, 3.7M parameters) is exported twice by `python -m export`:
once as today (model.onnx + embed.onnx), once with embed.onnx removed from the dir and its
manifest (an artifact from before embeddings). Per round and per `--streams` n, n greedy
streams (bench/clients.py: 64-token prompts, 128 new tokens, over HTTP) run against:

- old:       the server on the artifact without embed.onnx
- new:       the server on the artifact with it, its embeddings session loaded, idle
- new+embed: the same, while one client sends /v1/embeddings back to back (8 inputs of 64 tokens)

then the embeddings client alone. Variants take turns each round, so a burst of load on the
shared machine hits all alike. Printed: decode tokens/s per variant (over all rounds) and
its ratio to old, embeddings inputs/s and tokens/s alone and beside decoding. new / old is
the claim (the decode graph and the engine are unchanged); new+embed / new is the price of
sharing the cores with embedding work.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.clients import openai_streams  # noqa: E402
from bench.load import start_server  # noqa: E402
from bench.machine import describe_cpu  # noqa: E402
from bench.models import bench_model, run  # noqa: E402
from core.artifact import EMBED_FILE, MANIFEST_NAME  # noqa: E402
from core.net import free_port  # noqa: E402

PROMPT_TOKENS, NEW_TOKENS, EMBED_BATCH = 64, 128, 8


async def embed_client(base: str, seconds: float, texts: list[str], stop: asyncio.Event | None = None) -> tuple[int, int]:
    """(inputs, tokens) embedded by back-to-back requests of EMBED_BATCH texts, for `seconds`
    or until `stop` is set."""
    import httpx
    inputs = tokens = turn = 0
    end = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        while time.perf_counter() < end and not (stop and stop.is_set()):
            batch = [texts[(turn + i) % len(texts)] for i in range(EMBED_BATCH)]
            turn += EMBED_BATCH
            r = await http.post("/v1/embeddings", json={"input": batch})
            r.raise_for_status()
            inputs, tokens = inputs + EMBED_BATCH, tokens + r.json()["usage"]["prompt_tokens"]
    return inputs, tokens


async def decode_beside_embeddings(base: str, n: int, seconds: float, prompts: list[str], first: int):
    stop = asyncio.Event()
    embedding = asyncio.create_task(embed_client(base, seconds + 60, prompts, stop))
    t0 = time.perf_counter()
    tally = await openai_streams(base, n, seconds, prompts, NEW_TOKENS, first=first)
    wall = time.perf_counter() - t0
    stop.set()
    return tally, wall, await embedding


def old_artifact(art: Path, out: Path) -> Path:
    """`art` as exported before embeddings: no embed.onnx, none in the manifest."""
    shutil.copytree(art, out)
    (out / EMBED_FILE).unlink()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    del manifest["files"][EMBED_FILE]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    args = p.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"command: python bench/embeddings.py {' '.join(argv if argv is not None else sys.argv[1:])}\n"
          f"date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC   machine: {describe_cpu()}   commit: {commit}")
    model = bench_model("trained")
    prompts = model.prompts(PROMPT_TOKENS, count=200)
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / "new"
        run(["-m", "export", "--run", str(model.run), "--out", str(new)], "ONNX export")
        old = old_artifact(new, Path(tmp) / "old")
        servers = {}
        try:
            for name, art in (("old", old), ("new", new)):
                http = free_port()
                servers[name] = (start_server(art, [], http_port=http)[0], f"http://127.0.0.1:{http}")
            asyncio.run(embed_client(servers["new"][1], 0.1, prompts))     # load its embeddings session
            rows = {(v, n): [0, 0.0] for v in ("old", "new", "new+embed") for n in args.streams}
            alone, beside = [0, 0, 0.0], [0, 0, 0.0]
            for r in range(args.rounds):
                for n in args.streams:
                    for v in ("old", "new", "new+embed"):
                        base = servers["old" if v == "old" else "new"][1]
                        t0 = time.perf_counter()
                        if v == "new+embed":
                            tally, wall, (i, t) = asyncio.run(decode_beside_embeddings(base, n, args.seconds, prompts,
                                                                                        r * 1000))
                            beside = [beside[0] + i, beside[1] + t, beside[2] + wall]
                        else:
                            tally = asyncio.run(openai_streams(base, n, args.seconds, prompts, NEW_TOKENS, first=r * 1000))
                            wall = time.perf_counter() - t0
                        rows[v, n][0] += tally.tokens
                        rows[v, n][1] += wall
                t0 = time.perf_counter()
                i, t = asyncio.run(embed_client(servers["new"][1], args.seconds, prompts))
                alone = [alone[0] + i, alone[1] + t, alone[2] + time.perf_counter() - t0]
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    print(f"\ndecode tokens/s ({args.rounds} rounds x {args.seconds:g} s per variant; greedy, {PROMPT_TOKENS}-token "
          f"prompts, {NEW_TOKENS} new tokens)\n")
    print("| streams | old (no embed.onnx) | new (embeddings loaded, idle) | new / old | new + embeddings client "
          "| (new + embeddings) / new |\n| --- | --- | --- | --- | --- | --- |")
    for n in args.streams:
        tps = {v: rows[v, n][0] / rows[v, n][1] for v in ("old", "new", "new+embed")}
        print(f"| {n} | {tps['old']:.0f} | {tps['new']:.0f} | {tps['new'] / tps['old']:.2f} | {tps['new+embed']:.0f} "
              f"| {tps['new+embed'] / tps['new']:.2f} |")
    print(f"\nembeddings ({EMBED_BATCH} inputs of ~{PROMPT_TOKENS} tokens a request): alone "
          f"{alone[0] / alone[2]:.0f} inputs/s ({alone[1] / alone[2]:.0f} tokens/s); beside decoding "
          f"{beside[0] / beside[2]:.0f} inputs/s ({beside[1] / beside[2]:.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
