"""The same load against servers from two source trees, side by side in one run: did a
change make serving slower or faster?

    .venv/bin/python bench/ab.py --base main~3            # gRPC and HTTP, 1 and 32 streams
    .venv/bin/python bench/ab.py --base v1 --streams 1,32,64 --seconds 40 --rounds 5

`--base` is checked out into a temporary git worktree (stubs generated there with this
venv's grpc_tools); the other side is this working tree, uncommitted changes included. Both
serve the bench model's weights (bench/models.py), each exported by the tree's own
`python -m export` (each reads its own artifact format), from its own `python -m serving`. Scenarios
(tree x API x streams) take turns in `--rounds` rounds, so a burst of load on a shared
machine hits both trees alike, and the table gives each scenario's tokens/s, TTFT and
inter-token p50, and the ratio new / base. Clients (bench/load.py's) run in this process, on
the same cores, as in the load test.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from bench.clients import Tally, grpc_streams, openai_streams  # noqa: E402
from bench.load import start_server  # noqa: E402
from core.net import free_port  # noqa: E402
from bench.models import bench_model  # noqa: E402


def checkout(rev: str, where: Path) -> Path:
    tree = where / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True)
    (tree / "serving" / "_gen").mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", "proto", "--python_out=serving/_gen",
                    "--grpc_python_out=serving/_gen", "proto/shelley/v1/shelley.proto"], cwd=tree, check=True)
    return tree


def export_in(tree: Path, run: Path, out: Path) -> Path:
    """The run exported by the tree's own `python -m export`."""
    subprocess.run([sys.executable, "-m", "export", "--run", str(run), "--out", str(out)], cwd=tree,
                   env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True, text=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/ab.py", description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument("--streams", default="1,32")
    p.add_argument("--apis", default="grpc,http")
    p.add_argument("--seconds", type=float, default=24.0, help="per scenario, over all rounds")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--model", default="trained", choices=("trained", "random"), help="bench/models.py")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0, help="OpenAI's default (0: greedy, a variant)")
    p.add_argument("--server-args", default="--max-batch 64")
    args = p.parse_args(argv)
    streams, apis = [int(s) for s in args.streams.split(",")], args.apis.split(",")
    model = bench_model(args.model)
    prompts = model.prompts(args.prompt_tokens, 20_000)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"base": checkout(args.base, Path(tmp)), "new": ROOT}
        servers = {}
        try:
            for name, tree in trees.items():
                art = export_in(tree, model.run, Path(tmp) / f"art-{name}")
                http = free_port()
                proc, target, _ = start_server(art, args.server_args.split(), http, tree=tree)
                servers[name] = (proc, target, f"http://127.0.0.1:{http}")
            tallies: dict[tuple, list[Tally]] = {}
            walls: dict[tuple, float] = {}
            per = args.seconds / args.rounds
            for r in range(args.rounds):
                for n in streams:
                    for api in apis:
                        for name in (trees if r % 2 == 0 else reversed(list(trees))):
                            _, target, base = servers[name]
                            # both sides get the same prompts; neither sees one twice (a prefix cache would hit)
                            first = ((r * len(streams) + streams.index(n)) * len(apis) + apis.index(api)) * \
                                (len(prompts) // (args.rounds * len(streams) * len(apis)))
                            t0 = time.perf_counter()
                            run = grpc_streams(target, n, per, prompts, args.new_tokens, first=first, temperature=args.temperature) \
                                if api == "grpc" else openai_streams(base, n, per, prompts, args.new_tokens, first=first,
                                                                        temperature=args.temperature)
                            tally = asyncio.run(run)
                            key = (name, api, n)
                            tallies.setdefault(key, []).append(tally)
                            walls[key] = walls.get(key, 0.0) + time.perf_counter() - t0
        finally:
            for proc, _, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees["base"])], check=False)
            shutil.rmtree(trees["base"], ignore_errors=True)

    def merged(key) -> dict:
        t = Tally()
        for x in tallies[key]:
            t.add(x)
        return t.row(walls[key])

    print(f"base {args.base} vs this tree; {os.cpu_count()} CPUs; {args.rounds} rounds of "
          f"{per:.1f} s per scenario; model {args.model}; {args.prompt_tokens}-token prompts, temperature {args.temperature:g}, {args.new_tokens} new "
          f"tokens, ignore_eos; server {args.server_args}")
    print(f"{'api':<5} {'streams':>7} | {'base tok/s':>10} {'new tok/s':>10} {'new/base':>8} | "
          f"{'TTFT p50 ms':>15} | {'gap p50 ms':>13} | errors")
    for api in apis:
        for n in streams:
            b, x = merged(("base", api, n)), merged(("new", api, n))
            print(f"{api:<5} {n:>7} | {b['tok_s']:>10,.0f} {x['tok_s']:>10,.0f} {x['tok_s'] / b['tok_s']:>7.2f}x | "
                  f"{b['ttft50']:>6.1f} -> {x['ttft50']:>5.1f} | {b['gap50']:>5.2f} -> {x['gap50']:>5.2f} | "
                  f"{b['errors']} / {x['errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
