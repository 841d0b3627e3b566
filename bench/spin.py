"""How ONNX Runtime's pool threads should wait: `python -m serving --ort-spin call|off|always`
side by side, as users load it, in one run.

    python -m bench.spin                                   # 3.7M and 11.5M, 1 and 32 streams
    python -m bench.spin --sizes 87M --streams 1 --turns 3

One server per setting and model size, started once; then turns of `--seconds` each, the
settings taking turns within every turn (so a burst of other load hits all alike), OpenAI
streaming clients at temperature 1.0 on distinct 64-token prompts, 128 new tokens forced.
Tokens/s is the median over the turns; the ratio is against the first setting.

Why it matters: when a step's matmuls are split over the cores (a lone row of a larger
model; calibrated at start-up, serving/engine/spread.py), every operator hands work to the
pool's threads. Sleeping threads must be woken for each (tens of microseconds, per
operator); threads spinning between calls take cores the event loop and the clients need
between steps. "call" spins inside a graph call and sleeps when it returns.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.clients import openai_streams  # noqa: E402
from bench.load import start_server  # noqa: E402
from bench.machine import provenance  # noqa: E402
from bench.models import bench_model  # noqa: E402
from core.net import free_port  # noqa: E402

PROMPT_TOKENS, NEW_TOKENS = 64, 128


def measure(size: str, spins: list[str], streams: list[int], turns: int, seconds: float) -> dict:
    """{(spin, n): [tokens/s of each turn]} for one model size."""
    model = bench_model("trained", size)
    prompts = model.prompts(PROMPT_TOKENS, 4000)
    servers = {}
    try:
        for spin in spins:
            http = free_port()
            proc, _, _ = start_server(model.onnx, ["--max-batch", "64", "--ort-spin", spin], http)
            servers[spin] = (proc, f"http://127.0.0.1:{http}")
        rates: dict = {(spin, n): [] for spin in spins for n in streams}
        first = 0
        for turn in range(turns + 1):             # turn 0 warms every server up, untimed
            for n in streams:
                order = spins if turn % 2 else spins[::-1]
                for spin in order:
                    t0 = time.perf_counter()
                    tally = asyncio.run(openai_streams(servers[spin][1], n, seconds, prompts[first:] + prompts[:first],
                                                       NEW_TOKENS, temperature=1.0))
                    first = (first + 97) % len(prompts)   # no prompt repeats from one turn to the next
                    if turn:
                        rates[spin, n].append(tally.tokens / (time.perf_counter() - t0))
        return rates
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spin", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["3.7M", "11.5M"], choices=("3.7M", "11.5M", "87M"))
    p.add_argument("--spins", nargs="+", default=["off", "call"], choices=("off", "call", "always"),
                   help="the first is the baseline")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 32])
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0, help="per setting and turn")
    a = p.parse_args(argv)
    print(provenance("python -m bench.spin", argv))
    print(f"\nmedian tokens/s of {a.turns} turns of {a.seconds:g} s, the settings interleaved; temperature 1.0, "
          f"{PROMPT_TOKENS}-token prompts, {NEW_TOKENS} new tokens; ratio against --ort-spin {a.spins[0]}\n")
    print("| model | streams | " + " | ".join(f"--ort-spin {s}" for s in a.spins) + " | "
          + " | ".join(f"{s} vs {a.spins[0]}" for s in a.spins[1:]) + " |")
    print("| --- | ---: |" + " ---: |" * (2 * len(a.spins) - 1))
    for size in a.sizes:
        rates = measure(size, a.spins, a.streams, a.turns, a.seconds)
        for n in a.streams:
            med = [statistics.median(rates[s, n]) for s in a.spins]
            print(f"| {size} | {n} | " + " | ".join(f"{m:,.0f}" for m in med) + " | "
                  + " | ".join(f"{m / med[0]:.2f}x" for m in med[1:]) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
