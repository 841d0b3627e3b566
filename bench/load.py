"""Load test: N concurrent streaming clients against a running shelley server, with Hugging
Face transformers `generate` of the same model shape in the same run for reference.

    python -m bench.load                         # frankenstein shape, random weights
    python -m bench.load --model ART             # an exported artifact
    python -m bench.load --streams 1,32 --seconds 20 --hf-batches 1,16
    python -m bench.load --http                  # each scenario over gRPC and over HTTP (SSE)

Reports time to first token and inter-token latency (p50/p99), aggregate tokens/s and
errors per scenario, and the ratio to HF generate. Greedy, `ignore_eos`, so every request
generates exactly --new-tokens tokens. The server runs as a subprocess on this machine, so
the clients share its CPU, as they would in a sidecar load test. With --http the same
scenarios also run against the OpenAI-compatible /v1/completions (stream, httpx), one row
beside the other; an SSE chunk may carry several tokens, as a gRPC message may.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRANKENSTEIN = dict(n_layer=4, n_head=4, n_embd=256, block_size=256)
TEXT = ("You will rejoice to hear that no disaster has accompanied the commencement of an "
        "enterprise which you have regarded with such evil forebodings. I arrived here yesterday.")


def random_artifact(out: Path) -> Path:
    """A frankenstein-shaped GPT with random weights, exported (timing depends on shape only)."""
    import torch
    from training.checkpoint import save_checkpoint
    from training.model import GPT
    from training.model_config import ModelConfig
    from training.tokenizer import build_tokenizer

    from export.__main__ import main as export_main

    run = out / "run"
    run.mkdir(parents=True)
    tok = build_tokenizer("char", [TEXT])
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), **FRANKENSTEIN)
    torch.manual_seed(0)
    save_checkpoint(run / "ckpt.pt", {"model_config": cfg.to_dict(), "train_config": {},
                                      "model": GPT(cfg).state_dict(), "iter": 0, "best_val_loss": 0.0})
    tok.save(str(run / "tokenizer.json"))
    assert export_main(["--run", str(run), "--out", str(out / "art")]) == 0
    return out / "art"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(art: Path, extra: list[str], http_port: int = -1) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--model", str(art), "--host", "127.0.0.1",
                             "--port", str(port), "--http-port", str(http_port), "--metrics-port", "-1",
                             "--log-level", "warning", *extra])
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for _ in range(600):
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, target
            except grpc.RpcError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            time.sleep(0.1)
    raise SystemExit("server never became SERVING")


async def run_streams(target: str, n: int, seconds: float, prompt: str, new_tokens: int) -> dict:
    import grpc
    from serving.proto import pb, pb_grpc

    ttft, itl, errors, tokens = [], [], 0, 0
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.TextGenerationStub(ch)
        t_start = time.perf_counter()
        end = t_start + seconds

        async def client() -> None:
            nonlocal errors, tokens
            while time.perf_counter() < end:
                req = pb.GenerateRequest(prompt=prompt, max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
                last = time.perf_counter()
                first = True
                try:
                    async for msg in stub.Generate(req, timeout=120):
                        now = time.perf_counter()
                        (ttft if first else itl).append(now - last)
                        first, last = False, now
                        tokens += len(msg.token_ids)
                except grpc.RpcError:
                    errors += 1

        await asyncio.gather(*(client() for _ in range(n)))
        wall = time.perf_counter() - t_start
    return summary(ttft, itl, tokens, errors, wall)


async def run_sse_streams(base: str, n: int, seconds: float, prompt: str, new_tokens: int) -> dict:
    """The same scenario over POST /v1/completions with stream: true (one connection per client)."""
    import json

    import httpx

    ttft, itl, errors, tokens = [], [], 0, 0
    body = {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    t_start = time.perf_counter()
    end = t_start + seconds

    async def client() -> None:
        nonlocal errors, tokens
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            while time.perf_counter() < end:
                last, first = time.perf_counter(), True
                try:
                    async with http.stream("POST", "/v1/completions", json=body) as r:
                        r.raise_for_status()
                        async for line in r.aiter_lines():
                            if not line.startswith("data: {"):
                                continue
                            chunk = json.loads(line[6:])
                            if chunk["choices"]:
                                now = time.perf_counter()
                                (ttft if first else itl).append(now - last)
                                first, last = False, now
                            elif chunk.get("usage"):
                                tokens += chunk["usage"]["completion_tokens"]
                except httpx.HTTPError:
                    errors += 1

    await asyncio.gather(*(client() for _ in range(n)))
    return summary(ttft, itl, tokens, errors, time.perf_counter() - t_start)


def summary(ttft: list, itl: list, tokens: int, errors: int, wall: float) -> dict:
    pct = lambda xs, q: 1000 * float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {"ttft50": pct(ttft, 50), "ttft99": pct(ttft, 99), "itl50": pct(itl, 50), "itl99": pct(itl, 99),
            "tok_s": tokens / wall, "errors": errors, "requests": len(ttft)}


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc), to show where the cores went."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hf_generate(vocab: int, batch: int, prompt_tokens: int, new_tokens: int, seconds: float) -> float:
    """Sustained tokens/s of transformers' GPT-2 `generate` (greedy, KV cache) at this shape,
    in-process: back-to-back calls for `seconds`, like the server's scenarios.

    The better of 1 and 2 torch threads (half the time each): on a busy 2-core machine two
    threads can be many times slower than one, and HF should be at its best.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_positions=FRANKENSTEIN["block_size"], n_embd=FRANKENSTEIN["n_embd"],
                     n_layer=FRANKENSTEIN["n_layer"], n_head=FRANKENSTEIN["n_head"],
                     bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, vocab, (batch, prompt_tokens))
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
              pad_token_id=0, attention_mask=torch.ones_like(ids))
    default_threads = torch.get_num_threads()

    def once() -> float:
        t0 = time.perf_counter()
        model.generate(ids, **kw)
        return time.perf_counter() - t0

    best = 0.0
    with torch.inference_mode():
        for threads in sorted({1, min(2, default_threads)}):
            torch.set_num_threads(threads)
            model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
            calls, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 2:
                once()
                calls += 1
            best = max(best, calls * batch * new_tokens / (time.perf_counter() - t0))
    torch.set_num_threads(default_threads)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="artifact dir (default: a random frankenstein-shaped model)")
    p.add_argument("--streams", default="1,32", help="concurrent clients per scenario")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--hf-batches", default="1,16")
    p.add_argument("--server-args", default="--max-batch 32", help="extra flags for python -m serving")
    p.add_argument("--http", action="store_true", help="also run each scenario over HTTP/SSE, beside gRPC")
    p.add_argument("--no-hf", action="store_true", help="skip the HF generate reference")
    args = p.parse_args(argv)

    tmp = tempfile.TemporaryDirectory()
    art = Path(args.model) if args.model else random_artifact(Path(tmp.name))
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(art / "tokenizer.json"))
    prompt = (TEXT * 4)[: args.prompt_tokens]
    assert len(tok.encode(prompt, add_special_tokens=False).ids) == args.prompt_tokens, "char tokenizer expected"

    http_port = free_port() if args.http else -1
    proc, target = start_server(art, args.server_args.split(), http_port)
    apis = [("gRPC", lambda n: run_streams(target, n, args.seconds, prompt, args.new_tokens))]
    if args.http:
        base = f"http://127.0.0.1:{http_port}"
        apis.append(("HTTP/SSE", lambda n: run_sse_streams(base, n, args.seconds, prompt, args.new_tokens)))
    rows = []
    try:
        for n in [int(x) for x in args.streams.split(",")]:
            for api, run in apis:       # side by side, so load on a shared machine hits both alike
                server0, client0 = cpu_seconds(proc.pid), time.process_time()
                r = asyncio.run(run(n))
                r["server_cpu"] = (cpu_seconds(proc.pid) - server0) / args.seconds
                r["client_cpu"] = (time.process_time() - client0) / args.seconds
                rows.append((f"shelley {api}, {n} stream{'s' if n > 1 else ''}", r))
                print(f"{rows[-1][0]}: {r}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    hf = {}
    for b in [] if args.no_hf else [int(x) for x in args.hf_batches.split(",")]:
        hf[b] = hf_generate(tok.get_vocab_size(), b, args.prompt_tokens, args.new_tokens, args.seconds)
        print(f"HF generate batch {b}: {hf[b]:.0f} tok/s", flush=True)

    print(f"\n{os.cpu_count()} CPUs; model {FRANKENSTEIN if not args.model else art}; "
          f"{args.prompt_tokens}-token prompts, {args.new_tokens} new tokens, {args.seconds:.0f} s per scenario\n")
    print("| scenario | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | tokens/s | requests | errors "
          "| server/client cores | vs gRPC | vs HF b1 | vs HF b16 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    grpc_rate = {name.split(", ")[1]: r["tok_s"] for name, r in rows if "gRPC" in name}
    for name, r in rows:
        ratios = " | ".join(f"{r['tok_s'] / hf[b]:.2f}x" if b in hf else "-" for b in (1, 16))
        vs_grpc = f"{r['tok_s'] / grpc_rate[name.split(', ')[1]]:.2f}x"
        print(f"| {name} | {r['ttft50']:.1f} | {r['ttft99']:.1f} | {r['itl50']:.2f} | {r['itl99']:.2f} | "
              f"{r['tok_s']:.0f} | {r['requests']} | {r['errors']} | {r['server_cpu']:.2f}/{r['client_cpu']:.2f} "
              f"| {vs_grpc} | {ratios} |")
    for b, v in hf.items():
        print(f"| HF transformers generate, batch {b} | | | | | {v:.0f} | | | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
