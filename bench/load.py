"""Load test: N concurrent streaming clients against a running shelley server, beside Hugging
Face transformers `generate` of the same model shape in the same run; and a soak mode.

    python -m bench.load                          # 1, 32, 64 streams vs HF batch 1 and 16
    python -m bench.load --model ART --streams 1,32 --seconds 30 --rounds 3
    python -m bench.load --precisions fp32,int8   # the int8 model beside fp32 (one server each)
    python -m bench.load --soak 180               # 48 mixed clients, 3 minutes, --max-batch 32
    python -m bench.load --http                   # each scenario over gRPC and over HTTP (SSE)
    python -m bench.load --controls               # each scenario also with penalties + logit_bias on

Reports time to first token and inter-token latency (p50/p99), aggregate tokens/s, errors,
the CPU the server and the clients used, and the ratio to HF generate. Greedy with
`ignore_eos`, so every request generates exactly --new-tokens tokens. Scenarios run in
`--rounds` interleaved rounds (HF, then each server scenario, again and again), so a burst
of load on a shared machine hits all of them alike. The server is a subprocess on this
machine, so clients share its CPU, as in a sidecar load test.

Soak: 48 clients against `--max-batch 32` (so a queue forms) mix normal streams, streams
they cancel mid-way, 50 ms deadlines and invalid requests. It fails (exit 1) on any status
code other than the expected ones, if `shelley_requests_running`/`_waiting` do not return to
0, or if the server's RSS grows more than 10% after warm-up.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

FRANKENSTEIN = dict(n_layer=4, n_head=4, n_embd=256, block_size=256)
# --controls: what every request sets in the "+controls" scenarios (penalties and 20 biased tokens)
CONTROLS = dict(presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.1,
                logit_bias={i: -1.0 for i in range(10, 30)})
TEXT = ("You will rejoice to hear that no disaster has accompanied the commencement of an "
        "enterprise which you have regarded with such evil forebodings. I arrived here yesterday.")


def random_artifact(out: Path, quantize: bool = False) -> Path:
    """A frankenstein-shaped GPT with random weights, exported (timing depends on shape only);
    with `quantize`, model.int8.onnx too (its quality is checked on a small local corpus)."""
    import torch

    from core.model_config import ModelConfig
    from export.__main__ import main as export_main
    from training.checkpoint import save_checkpoint
    from training.model import GPT
    from training.tokenizer import build_tokenizer

    run = out / "run"
    run.mkdir(parents=True)
    (run / "corpus.txt").write_text(TEXT * 400)
    tok = build_tokenizer("char", [TEXT])
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), **FRANKENSTEIN)
    torch.manual_seed(0)
    save_checkpoint(run / "ckpt.pt", {"model_config": cfg.to_dict(), "train_config": {"corpus": str(run / "corpus.txt")},
                                      "model": GPT(cfg).state_dict(), "iter": 0, "best_val_loss": 0.0})
    tok.save(str(run / "tokenizer.json"))
    assert export_main(["--run", str(run), "--out", str(out / "art"), *(["--quantize", "int8"] if quantize else [])]) == 0
    return out / "art"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(art: Path, extra: list[str], http_port: int = -1,
                 tree: Path | None = None) -> tuple[subprocess.Popen, str, int]:
    """(process, gRPC target, metrics port) once health says SERVING; HTTP on http_port (-1 = off).
    `tree`: serve from that source tree (bench/ab.py) instead of this one."""
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


class Tally:
    """Latencies, tokens and status codes gathered by the clients of one scenario."""

    def __init__(self):
        self.ttft, self.itl, self.tokens, self.requests, self.codes = [], [], 0, 0, {}

    def count(self, code: str) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1

    def row(self, wall: float) -> dict:
        pct = lambda xs, q: 1000 * float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
        errors = sum(n for c, n in self.codes.items() if c != "OK")
        return {"ttft50": pct(self.ttft, 50), "ttft99": pct(self.ttft, 99), "itl50": pct(self.itl, 50),
                "itl99": pct(self.itl, 99), "tok_s": self.tokens / wall, "errors": errors,
                "requests": self.requests}


async def stream_once(stub, req, tally: Tally, timeout: float = 120, cancel_after: int = 0) -> None:
    """One Generate call, timed; cancel_after > 0 cancels it after that many messages."""
    import grpc
    last, first, got = time.perf_counter(), True, 0
    call = stub.Generate(req, timeout=timeout)
    try:
        async for msg in call:
            now = time.perf_counter()
            (tally.ttft if first else tally.itl).append(now - last)
            first, last = False, now
            tally.tokens += len(msg.token_ids)
            got += 1
            if cancel_after and got >= cancel_after:
                call.cancel()
                tally.count("CANCELLED (by the client)")
                return
        tally.requests += 1
        tally.count("OK")
    except grpc.RpcError as e:
        tally.count(e.code().name)
    except asyncio.CancelledError:
        tally.count("CANCELLED (by the client)")


async def run_streams(target: str, n: int, seconds: float, prompt: str, new_tokens: int,
                      controls: dict | None = None) -> Tally:
    """n clients, each sending back-to-back greedy requests for `seconds` (with `controls`)."""
    import grpc

    from serving.proto import pb, pb_grpc

    tally = Tally()
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.TextGenerationStub(ch)
        end = time.perf_counter() + seconds
        req = pb.GenerateRequest(prompt=prompt, max_tokens=new_tokens, temperature=0.0, ignore_eos=True,
                                 **(controls or {}))

        async def client() -> None:
            while time.perf_counter() < end:
                await stream_once(stub, req, tally)
        await asyncio.gather(*(client() for _ in range(n)))
    return tally


async def run_sse_streams(base: str, n: int, seconds: float, prompt: str, new_tokens: int,
                          controls: dict | None = None) -> Tally:
    """The same scenario over POST /v1/completions with stream: true (httpx, one connection
    per client); an SSE chunk may carry several tokens, as a gRPC message may."""
    import json

    import httpx

    tally = Tally()
    body = {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    if controls:
        body.update(controls, logit_bias={str(k): v for k, v in controls["logit_bias"].items()})
    end = time.perf_counter() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            while time.perf_counter() < end:
                last, first = time.perf_counter(), True
                try:
                    async with http.stream("POST", "/v1/completions", json=body) as r:
                        async for line in r.aiter_lines():
                            if not line.startswith("data: {"):
                                continue
                            chunk = json.loads(line[6:])
                            if chunk["choices"]:
                                now = time.perf_counter()
                                (tally.ttft if first else tally.itl).append(now - last)
                                first, last = False, now
                            elif chunk.get("usage"):
                                tally.tokens += chunk["usage"]["completion_tokens"]
                        tally.count("OK" if r.status_code == 200 else str(r.status_code))
                        tally.requests += r.status_code == 200
                except httpx.HTTPError as e:
                    tally.count(type(e).__name__)

    await asyncio.gather(*(client() for _ in range(n)))
    return tally


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
    """transformers' GPT-2 `generate` (greedy, KV cache) at the server's model shape,
    in-process; with the better of 1 and 2 torch threads (on a busy 2-core machine two
    threads can be much slower than one, and HF should be at its best)."""

    def __init__(self, vocab: int, prompt_tokens: int, new_tokens: int):
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
        cfg = GPT2Config(vocab_size=vocab, n_positions=FRANKENSTEIN["block_size"], n_embd=FRANKENSTEIN["n_embd"],
                         n_layer=FRANKENSTEIN["n_layer"], n_head=FRANKENSTEIN["n_head"],
                         bos_token_id=None, eos_token_id=None)
        self.torch, self.model = torch, GPT2LMHeadModel(cfg).eval()
        self.vocab, self.prompt_tokens, self.new_tokens = vocab, prompt_tokens, new_tokens
        self.threads = sorted({1, min(2, torch.get_num_threads())})

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


def compare(args, art: Path, prompt: str, vocab: int) -> int:
    hf = HFGenerate(vocab, args.prompt_tokens, args.new_tokens)
    streams = [int(x) for x in args.streams.split(",")]
    hf_batches = [int(x) for x in args.hf_batches.split(",")]
    per_round = args.seconds / args.rounds
    servers, apis = {}, {}
    for precision in args.precisions.split(","):
        http_port = free_port() if args.http else -1
        servers[precision] = proc, target, _ = start_server(
            art, [*args.server_args.split(), "--precision", precision], http_port)
        for label, controls in [("", None), *([(" +controls", CONTROLS)] if args.controls else [])]:
            apis[precision, "gRPC" + label] = lambda n, target=target, c=controls: run_streams(
                target, n, per_round, prompt, args.new_tokens, c)
            if args.http:
                base = f"http://127.0.0.1:{http_port}"
                apis[precision, "HTTP/SSE" + label] = lambda n, base=base, c=controls: run_sse_streams(
                    base, n, per_round, prompt, args.new_tokens, c)
    scenarios = [(precision, api, n) for n in streams for precision, api in apis]
    tallies = {s: Tally() for s in scenarios}
    walls, cpu = dict.fromkeys(scenarios, 0.0), {s: [0.0, 0.0] for s in scenarios}
    hf_done = {b: [0.0, 0.0] for b in hf_batches}
    try:
        for _ in range(args.rounds):
            for b in hf_batches:
                tokens, wall = hf.run(b, per_round)
                hf_done[b][0] += tokens
                hf_done[b][1] += wall
            for s in scenarios:
                pid = servers[s[0]][0].pid
                server0, client0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
                t = asyncio.run(apis[s[:2]](s[2]))
                walls[s] += time.perf_counter() - t0
                cpu[s][0] += cpu_seconds(pid) - server0
                cpu[s][1] += time.process_time() - client0
                merge(tallies[s], t)
    finally:
        for proc, _, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in servers.values():
            proc.wait(60)
    hf_rate = {b: tok / wall for b, (tok, wall) in hf_done.items()}
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{os.cpu_count()} CPUs (load {load} at the end); model {FRANKENSTEIN if not args.model else art}; "
          f"{args.prompt_tokens}-token prompts, {args.new_tokens} new tokens; {args.seconds:.0f} s per scenario "
          f"in {args.rounds} interleaved rounds; server {args.server_args}\n")
    print("| scenario | TTFT p50 / p99 ms | ITL p50 / p99 ms | tokens/s | requests | errors "
          "| server / client cores | " + " | ".join(f"vs HF b{b}" for b in hf_batches) + " |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |" + " ---: |" * len(hf_batches))
    for s in scenarios:
        precision, api, n = s
        r = tallies[s].row(walls[s])
        ratios = " | ".join(f"{r['tok_s'] / hf_rate[b]:.2f}x" for b in hf_batches)
        print(f"| shelley {api} {precision}, {n} stream{'s' if n > 1 else ''} | {r['ttft50']:.1f} / {r['ttft99']:.1f} | "
              f"{r['itl50']:.2f} / {r['itl99']:.2f} | {r['tok_s']:,.0f} | {r['requests']} | {r['errors']} | "
              f"{cpu[s][0] / walls[s]:.2f} / {cpu[s][1] / walls[s]:.2f} | {ratios} |")
    for b in hf_batches:
        print(f"| HF transformers generate, batch {b} | | | {hf_rate[b]:,.0f} | | | |" + " |" * len(hf_batches))
    for precision, api, n in scenarios:   # --controls: what penalties + logit_bias cost, same run
        if api.endswith(" +controls"):
            on, off = (tallies[precision, a, n].row(walls[precision, a, n])["tok_s"] for a in (api, api[:-10]))
            print(f"\n{api[:-10]} {precision}, {n} streams: tokens/s with the controls / without = {on / off:.3f}")
    return 0


def merge(into: Tally, t: Tally) -> None:
    into.ttft += t.ttft
    into.itl += t.itl
    into.tokens += t.tokens
    into.requests += t.requests
    for c, k in t.codes.items():
        into.codes[c] = into.codes.get(c, 0) + k


SOAK_EXPECTED = {"OK", "CANCELLED (by the client)", "DEADLINE_EXCEEDED", "INVALID_ARGUMENT"}


async def soak_clients(target: str, seconds: float, clients: int, prompt: str, seed: int = 0) -> Tally:
    """Each client loops over a random mix: a normal stream (60%), one it cancels mid-way
    (15%), one with a 50 ms deadline (15%), an invalid request (10%)."""
    import grpc

    from serving.proto import pb, pb_grpc

    tally, rng = Tally(), random.Random(seed)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.TextGenerationStub(ch)
        end = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < end:
                kind, n = rng.random(), rng.randint(16, 160)
                req = pb.GenerateRequest(prompt=prompt[: rng.randint(1, len(prompt))], max_tokens=n,
                                         temperature=rng.choice([0.0, 0.8]), ignore_eos=True)
                if kind < 0.60:
                    await stream_once(stub, req, tally)
                elif kind < 0.75:
                    await stream_once(stub, req, tally, cancel_after=rng.randint(1, 8))
                elif kind < 0.90:
                    await stream_once(stub, req, tally, timeout=0.05)
                else:
                    bad = rng.choice([dict(max_tokens=0), dict(top_p=2.0), dict(temperature=-1.0)])
                    await stream_once(stub, pb.GenerateRequest(prompt=prompt[:8], **bad), tally)
        await asyncio.gather(*(client() for _ in range(clients)))
    return tally


def soak(args, art: Path, prompt: str) -> int:
    extra = ["--max-batch", "32", *args.server_args.replace("--max-batch 32", "").split()]
    proc, target, metrics_port = start_server(art, extra)
    rss, stop = [], time.perf_counter() + args.soak
    try:
        async def run() -> Tally:
            task = asyncio.ensure_future(soak_clients(target, args.soak, 48, prompt))
            while not task.done():
                rss.append((time.perf_counter(), rss_mb(proc.pid)))
                await asyncio.sleep(1.0)
            return await task
        tally = asyncio.run(run())
        time.sleep(1.0)   # cancelled rows leave at the next step
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            scrape = r.read().decode()
        gauges = {name: float(line.split()[-1]) for line in scrape.splitlines()
                  for name in ("shelley_requests_running", "shelley_requests_waiting") if line.startswith(name + " ")}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    warm = [m for t, m in rss if t > stop - args.soak + min(30.0, args.soak / 4)]
    growth = warm[-1] / warm[0] - 1 if len(warm) > 1 else float("nan")
    unexpected = {c: k for c, k in tally.codes.items() if c not in SOAK_EXPECTED}
    print(f"\nsoak: 48 clients, {args.soak:.0f} s, --max-batch 32; load {os.getloadavg()[0]:.1f}")
    print("| status | calls |\n| --- | ---: |")
    for c, k in sorted(tally.codes.items()):
        print(f"| {c} | {k} |")
    print(f"\ntokens streamed {tally.tokens:,}; gauges after: {gauges}; server RSS after warm-up "
          f"{warm[0] if warm else float('nan'):.0f} -> {warm[-1] if warm else float('nan'):.0f} MB ({growth:+.1%}); "
          f"server exit status after SIGTERM {code}")
    ok = (not unexpected and gauges == {"shelley_requests_running": 0.0, "shelley_requests_waiting": 0.0}
          and growth <= 0.10 and code == 0)
    print("soak: " + ("ok" if ok else f"FAILED (unexpected codes {unexpected})" if unexpected else "FAILED"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="artifact dir (default: a random frankenstein-shaped model)")
    p.add_argument("--streams", default="1,32,64", help="concurrent clients per scenario")
    p.add_argument("--seconds", type=float, default=15.0, help="per scenario, over all rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--hf-batches", default="1,16")
    p.add_argument("--server-args", default="--max-batch 64", help="extra flags for python -m serving")
    p.add_argument("--precisions", default="fp32", help="serve these model files side by side, e.g. fp32,int8")
    p.add_argument("--soak", type=float, default=0, help="run the soak test for this many seconds instead")
    p.add_argument("--http", action="store_true", help="also run each scenario over HTTP/SSE, beside gRPC")
    p.add_argument("--controls", action="store_true",
                   help="also run each scenario with penalties and logit_bias on for every request (CONTROLS)")
    args = p.parse_args(argv)

    tmp = tempfile.TemporaryDirectory()
    art = Path(args.model) if args.model else random_artifact(Path(tmp.name), "int8" in args.precisions)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(art / "tokenizer.json"))
    prompt = (TEXT * 4)[: args.prompt_tokens]
    assert len(tok.encode(prompt, add_special_tokens=False).ids) == args.prompt_tokens, "char tokenizer expected"
    if args.soak:
        return soak(args, art, prompt)
    return compare(args, art, prompt, tok.get_vocab_size())


if __name__ == "__main__":
    sys.exit(main())
