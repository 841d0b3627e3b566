"""Serving under load: shelley against llama.cpp's llama-server and Hugging Face `generate`,
on the same weights and the same cores, in one run.

    python -m bench.load                              # 1, 32, 64 streams; fp32/int8 vs F32/Q8_0
    python -m bench.load --size 87M --streams 1,32    # the other shapes: 11.5M, 87M (bench/models.py)
    python -m bench.load --greedy                     # temperature 0 too, as labelled variants
    python -m bench.load --streams 1 --seconds 30 --peers shelley-fp32,llama-f32
    python -m bench.load --prefix                     # TTFT of a repeated 200-token prompt
    python -m bench.load --grpc                       # shelley over gRPC too
    python -m bench.load --controls                   # shelley also with penalties + logit_bias on
    python -m bench.load --model random               # untrained weights (timing is the shape's)

Every server gets the same OpenAI streaming client (bench/clients.py): 64-token prompts, all
different (held-out text), 128 tokens forced (`ignore_eos`), temperature 1.0 (`--temperature`;
OpenAI's default, what chat clients send; no other sampling field, so each server applies its
own defaults: llama-server its top-k 40, top-p 0.95, min-p 0.05 chain, shelley none);
`--greedy` adds each scenario at temperature 0, labelled. Scenarios take turns in
`--rounds` rounds (HF, then each server and stream count), so a burst of load on a shared
machine hits all alike. Reported per scenario: tokens/s, time to the first chunk, gaps
between chunks and tokens per chunk, errors, the server's cores and resident memory, and
ratios: shelley fp32 against llama.cpp F32, shelley int8 against Q8_0, and against HF at
batch 1 and 16. Servers are subprocesses on this machine: the clients share its cores.

Peers: shelley (`python -m serving`, `--max-batch 64`, HTTP), llama.cpp's llama-server
(built from the pinned source by tests/llama_cpp.py, `-t 2`, 64 slots of the model's
context (`-c` 64 x context), f16 KV cache as it defaults to, prompt caching on as it defaults to), HF transformers
`generate` in-process (the better of 1 and 2 torch threads). Needs `pip install -e '.[bench]'`
and, for llama.cpp, cmake and a C++ compiler (first run: a ~3-minute build, then cached).

`--prefix`: one client sends a 200-token prompt again and again (a system prompt, a
playground retry), and then 200-token prompts that are all different; TTFT p50 of each, per
server. The soak test is bench/soak.py.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script too
from bench.clients import Tally, grpc_streams, openai_streams  # noqa: E402
from bench.machine import provenance  # noqa: E402
from core.net import free_port  # noqa: E402

SLOTS, THREADS = 64, 2
DISTINCT = 40_000       # prompts per run: no server sees one twice (bench/models.py prompts)
# --controls: what every request of the "+controls" scenarios sets (penalties, 20 biased tokens)
CONTROLS = dict(presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.1,
                logit_bias={str(i): -1.0 for i in range(10, 30)})


def start_server(art: Path, extra: list[str], http_port: int = -1,
                 tree: Path | None = None) -> tuple[subprocess.Popen, str, int]:
    """`python -m serving`: (process, gRPC target, metrics port) once health says SERVING;
    HTTP on http_port (-1 = off). `tree`: serve from that source tree (bench/ab.py)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port, metrics = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--model", str(art), "--host", "127.0.0.1",
                             "--port", str(port), "--metrics-port", str(metrics), "--http-port", str(http_port),
                             "--log-level", "warning", *extra], cwd=tree, env=env)
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for _ in range(600):
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, target, metrics
            except grpc.RpcError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            time.sleep(0.1)
    raise SystemExit("server never became SERVING")


@dataclass(eq=False)
class Peer:
    name: str            # "shelley-fp32", "llama-q8_0", ...
    label: str           # for the table
    base: str            # http://127.0.0.1:PORT
    pid: int
    stop: object
    grpc_target: str = ""


def start_peers(names: list[str], model, server_args: list[str], want_grpc: bool) -> list[Peer]:
    """Peers by name: shelley-fp32, shelley-int8, llama-f32, llama-q8_0; a shelley peer may
    carry its own flags after '@' (`shelley-fp32@--speculate 0`)."""
    peers = []
    for spec in names:
        name, _, flags = spec.partition("@")
        kind, precision = name.split("-", 1)
        if kind == "shelley":
            http = free_port()
            proc, target, _ = start_server(model.onnx, [*server_args, "--precision", precision, *flags.split()], http)

            def stop(proc=proc):
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            peers.append(Peer(name, f"shelley {precision}{' ' + flags if flags else ''}", f"http://127.0.0.1:{http}",
                              proc.pid, stop, target if want_grpc else ""))
        elif kind == "llama":
            from core.artifact import read_config
            from tests.llama_cpp import LlamaServer, llama_server_binary
            context = read_config(model.onnx).context_length
            srv = LlamaServer(llama_server_binary(), ["-m", str(model.gguf[precision]), "-t", str(THREADS),
                                                      "-np", str(SLOTS), "-c", str(SLOTS * context)]).start()
            peers.append(Peer(name, f"llama.cpp {precision.upper()}", srv.url, srv.proc.pid, srv.stop))
        else:
            raise SystemExit(f"unknown peer {name}; use shelley-fp32|shelley-int8|llama-f32|llama-q8_0")
    return peers


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc), to show where the cores went."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class HFGenerate:
    """transformers' GPT-2 `generate` (greedy, KV cache) on the same weights (export
    --format hf), in-process; with the better of 1 and 2 torch threads (on a busy 2-core
    machine two threads can be much slower than one, and HF should be at its best)."""

    def __init__(self, run: Path, prompt_tokens: int, new_tokens: int):
        import tempfile

        import torch
        from transformers import GPT2LMHeadModel

        from export.hf import export_hf
        with tempfile.TemporaryDirectory() as d:
            export_hf(run, Path(d) / "hf")
            self.model = GPT2LMHeadModel.from_pretrained(str(Path(d) / "hf")).eval()
        self.torch, self.vocab = torch, self.model.config.vocab_size
        self.prompt_tokens, self.new_tokens = prompt_tokens, new_tokens
        self.threads = sorted({1, min(THREADS, torch.get_num_threads())})

    def run(self, batch: int, seconds: float) -> tuple[float, float]:
        """(tokens generated, wall seconds) of back-to-back calls for about `seconds`."""
        torch = self.torch
        ids = torch.randint(0, self.vocab, (batch, self.prompt_tokens))
        kw = dict(max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens, do_sample=False,
                  use_cache=True, pad_token_id=0, attention_mask=torch.ones_like(ids))
        best = (0.0, 1.0)
        with torch.inference_mode():
            for threads in self.threads:
                torch.set_num_threads(threads)
                self.model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
                calls, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds / len(self.threads):
                    self.model.generate(ids, **kw)
                    calls += 1
                done = (calls * batch * self.new_tokens, time.perf_counter() - t0)
                best = max(best, done, key=lambda d: d[0] / d[1])
        return best


def measure(peer: Peer, api: str, n: int, seconds: float, prompts: list[str], new_tokens: int,
            first: int, temperature: float) -> tuple[Tally, float, float]:
    """(tally, wall seconds, server CPU seconds) of one scenario's turn; api "http+controls"
    sets CONTROLS on every request, "http+greedy" temperature 0."""
    extra = CONTROLS if api == "http+controls" else None
    t = 0.0 if api == "http+greedy" else temperature
    run = openai_streams(peer.base, n, seconds, prompts, new_tokens, extra, first=first, temperature=t) \
        if api != "grpc" else grpc_streams(peer.grpc_target, n, seconds, prompts, new_tokens, first=first, temperature=t)
    cpu0, t0 = cpu_seconds(peer.pid), time.perf_counter()
    tally = asyncio.run(run)
    return tally, time.perf_counter() - t0, cpu_seconds(peer.pid) - cpu0


def compare(args, model, peers: list[Peer]) -> None:
    streams = [int(x) for x in args.streams.split(",")]
    hf_batches = [int(x) for x in args.hf_batches.split(",") if x]
    hf = HFGenerate(model.run, args.prompt_tokens, args.new_tokens) if hf_batches else None
    prompts = model.prompts(args.prompt_tokens, DISTINCT)
    per_round = args.seconds / args.rounds
    def apis(p: Peer) -> list[str]:
        shelley = p.name.startswith("shelley")
        return ["http", *(["grpc"] if p.grpc_target else []), *(["http+controls"] if shelley and args.controls else []),
                *(["http+greedy"] if args.greedy else [])]
    scenarios = [(p, api, n) for n in streams for p in peers for api in apis(p)]
    tallies = {s: Tally() for s in scenarios}
    walls, cpu = dict.fromkeys(scenarios, 0.0), dict.fromkeys(scenarios, 0.0)
    hf_done = {b: [0.0, 0.0] for b in hf_batches}
    share = DISTINCT // (args.rounds * len(scenarios))   # prompts per scenario and round
    for r in range(args.rounds):
        for b in hf_batches:
            tokens, wall = hf.run(b, per_round)
            hf_done[b][0] += tokens
            hf_done[b][1] += wall
        for i, s in enumerate(scenarios if r % 2 == 0 else scenarios[::-1]):
            # each scenario's round starts on prompts no server has seen in this run
            tally, wall, used = measure(*s, per_round, prompts, args.new_tokens, first=(r * len(scenarios) + i) * share,
                                        temperature=args.temperature)
            tallies[s].add(tally)
            walls[s] += wall
            cpu[s] += used
    hf_rate = {b: tok / wall for b, (tok, wall) in hf_done.items()}
    rate = {s: tallies[s].row(walls[s])["tok_s"] for s in scenarios}
    print(f"\n{provenance('python -m bench.load', args.argv)}\n")
    print(f"{os.cpu_count()} CPUs (load {' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end); model "
          f"{model.run.parent.name} ({params(model)}); {args.prompt_tokens}-token prompts, all different, "
          f"{args.new_tokens} new tokens, temperature {args.temperature:g}"
          f"{' (greedy rows: 0)' if args.greedy else ''}; {args.seconds:.0f} s per scenario in {args.rounds} "
          f"interleaved rounds; RSS at the end of the run\n")
    head = ["scenario", "tokens/s", "TTFT p50 / p99 ms", "chunk gap p50 / p99 ms", "tokens/chunk", "errors",
            "server cores", "RSS MB", "vs llama.cpp", *(f"vs HF b{b}" for b in hf_batches)]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for s in scenarios:
        peer, api, n = s
        row = tallies[s].row(walls[s])
        twin = {"shelley-fp32": "llama-f32", "shelley-int8": "llama-q8_0"}.get(peer.name)
        ref = next((rate[t] for t in scenarios if t[0].name == twin and t[1] == "http" and t[2] == n), None)
        if api == "http+controls":   # against the same server without the controls
            ref = rate[(peer, "http", n)]
        if api == "http+greedy":     # against the twin, greedy too
            ref = next((rate[t] for t in scenarios if t[0].name == twin and t[1] == api and t[2] == n), None)
        versus = f"{row['tok_s'] / ref:.2f}x" if ref else ""
        suffix = {"grpc": " gRPC", "http+controls": " +controls", "http+greedy": " greedy"}.get(api, "")
        cells = [f"{peer.label}{suffix}, {n} stream{'s' * (n > 1)}", f"{row['tok_s']:,.0f}",
                 f"{row['ttft50']:.1f} / {row['ttft99']:.1f}", f"{row['gap50']:.2f} / {row['gap99']:.2f}",
                 f"{row['per_chunk']:.1f}", f"{row['errors']}", f"{cpu[s] / walls[s]:.2f}",
                 f"{rss_mb(peer.pid):.0f}", versus, *(f"{row['tok_s'] / hf_rate[b]:.2f}x" for b in hf_batches)]
        print("| " + " | ".join(cells) + " |")
    for b in hf_batches:
        print(f"| HF transformers generate, batch {b} | {hf_rate[b]:,.0f} |" + " |" * (len(head) - 2))


def params(model) -> str:
    from core.artifact import read_config
    c = read_config(model.onnx)
    return f"{c.params / 1e6:.1f}M parameters, {c.n_layer} layers x {c.n_head * c.head_dim}, context {c.context_length}"


def prefix(args, model, peers: list[Peer]) -> None:
    """TTFT of a repeated 200-token prompt against 200-token prompts all different."""
    distinct = model.prompts(200, DISTINCT)
    # The floor: a one-token prompt's TTFT is the request's fixed cost (HTTP, tokenizing,
    # the hop to the engine and back, one decode step), all a cache hit can come down to.
    cases = {"repeated": [distinct[0]], "all different": distinct[1:], "one token": model.prompts(1, 50)}
    tallies = {(p, c): Tally() for p in peers for c in cases}
    for r in range(args.rounds):
        for p in peers:
            for case, prompts in cases.items():
                first = (r * len(peers) + peers.index(p)) * (DISTINCT // (args.rounds * len(peers)))
                tallies[p, case].add(asyncio.run(openai_streams(p.base, 1, args.seconds / args.rounds / 2, prompts,
                                                                     16, first=first)))
    print("\none client, 200-token prompts, 16 new tokens; TTFT p50 ms (p99)\n")
    print("| server | prompt repeated | prompts all different | one-token prompts (the floor) | repeated / different |"
          "\n| --- | ---: | ---: | ---: | ---: |")
    for p in peers:
        same, other, floor = (tallies[p, c].row(1.0) for c in cases)
        print(f"| {p.label} | {same['ttft50']:.2f} ({same['ttft99']:.2f}) | {other['ttft50']:.2f} ({other['ttft99']:.2f}) "
              f"| {floor['ttft50']:.2f} ({floor['ttft99']:.2f}) | {same['ttft50'] / other['ttft50']:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="trained", choices=("trained", "random"), help="bench/models.py")
    p.add_argument("--size", default="3.7M", choices=("3.7M", "11.5M", "87M"), help="the model's shape (bench/models.py)")
    p.add_argument("--temperature", type=float, default=1.0, help="every request's (the headline: 1.0)")
    p.add_argument("--greedy", action="store_true", help="each scenario at temperature 0 too, labelled")
    p.add_argument("--peers", default="shelley-fp32,shelley-int8,llama-f32,llama-q8_0")
    p.add_argument("--streams", default="1,32,64", help="concurrent clients per scenario")
    p.add_argument("--seconds", type=float, default=15.0, help="per scenario, over all rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--hf-batches", default="1,16", help="empty: no HF reference")
    p.add_argument("--server-args", default=f"--max-batch {SLOTS}", help="extra flags for python -m serving")
    p.add_argument("--grpc", action="store_true", help="shelley over gRPC too, beside HTTP")
    p.add_argument("--prefix", action="store_true", help="TTFT with and without a repeated prompt instead")
    p.add_argument("--controls", action="store_true", help="shelley also with penalties and logit_bias on")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv

    from bench.models import bench_model
    model = bench_model(args.model, args.size)
    peers = start_peers(args.peers.split(","), model, args.server_args.split(), args.grpc)
    try:
        (prefix if args.prefix else compare)(args, model, peers)
    finally:
        for peer in peers:
            peer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
