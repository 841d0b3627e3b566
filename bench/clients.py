"""Load generators for the serving benchmarks: streaming clients over OpenAI's HTTP API (the
same client for every server) and over gRPC, counting what each request saw.

    tally = asyncio.run(openai_streams(base, n=32, seconds=10, prompts=P, new_tokens=128))
    tally = asyncio.run(grpc_streams(target, n=32, seconds=10, prompts=P, new_tokens=128))
    row = tally.row(wall_seconds)     # tok_s, ttft50/99, gap50/99, tokens per chunk, errors

`openai_streams` drives shelley and llama.cpp's llama-server alike: `POST /v1/completions`
with `stream: true`, `temperature` (1.0 unless told: OpenAI's default, what chat clients send;
0 = greedy), `ignore_eos` (both honour it), so every request generates exactly `new_tokens`
tokens. Request i of a client takes prompt i of `prompts`, cycling, so
a server that caches prompts gains only where the bench means it to (`--prefix`). A chunk
may carry several tokens (shelley merges a stream's tokens when it runs ahead of the
client; llama.cpp sends one per chunk), so latency is per chunk: time to the first chunk
with text, the gaps between the next ones, and the tokens a chunk carried on average.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time

import numpy as np


class Tally:
    """Latencies, tokens and status codes gathered by the clients of one scenario."""

    def __init__(self):
        self.ttft, self.gaps, self.tokens, self.chunks, self.requests, self.codes = [], [], 0, 0, 0, {}

    def count(self, code: str) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1

    def add(self, other: "Tally") -> "Tally":
        self.ttft += other.ttft
        self.gaps += other.gaps
        self.tokens += other.tokens
        self.chunks += other.chunks
        self.requests += other.requests
        for c, k in other.codes.items():
            self.codes[c] = self.codes.get(c, 0) + k
        return self

    def row(self, wall: float) -> dict:
        pct = lambda xs, q: 1000 * float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
        errors = sum(n for c, n in self.codes.items() if c not in ("OK", "CANCELLED (by the client)"))
        return {"ttft50": pct(self.ttft, 50), "ttft99": pct(self.ttft, 99), "gap50": pct(self.gaps, 50),
                "gap99": pct(self.gaps, 99), "tok_s": self.tokens / wall, "errors": errors,
                "requests": self.requests, "per_chunk": self.tokens / max(1, self.chunks)}


async def openai_streams(base: str, n: int, seconds: float, prompts: list[str], new_tokens: int,
                         extra: dict | None = None, first: int = 0, temperature: float = 1.0) -> Tally:
    """n clients, each sending back-to-back streamed completions for `seconds` (httpx, one
    connection per client). `extra` adds request fields (e.g. penalties)."""
    import httpx

    tally = Tally()
    body = {"max_tokens": new_tokens, "temperature": temperature, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, **(extra or {})}
    end = time.perf_counter() + seconds
    turns = itertools.count(first)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=300) as http:
            while time.perf_counter() < end:
                prompt = prompts[next(turns) % len(prompts)]
                last, got, chunks, finish = time.perf_counter(), False, 0, None
                try:
                    async with _post(http, {**body, "prompt": prompt}) as r:
                        async for line in r.aiter_lines():
                            if not line.startswith("data: {"):
                                continue
                            chunk = json.loads(line[6:])
                            choice = (chunk.get("choices") or [{}])[0]
                            if choice.get("text"):
                                now = time.perf_counter()
                                (tally.gaps if got else tally.ttft).append(now - last)
                                got, last, chunks = True, now, chunks + 1
                            finish = choice.get("finish_reason") or finish
                        ok = r.status_code == 200 and finish == "length"
                        tally.count("OK" if ok else f"{r.status_code} {finish}")
                        if ok:   # ignore_eos: exactly new_tokens each (usage says the same, where sent)
                            tally.requests += 1
                            tally.tokens += new_tokens
                            tally.chunks += chunks
                except httpx.HTTPError as e:
                    tally.count(type(e).__name__)

    await asyncio.gather(*(client() for _ in range(n)))
    return tally


class _post:
    """`http.stream("POST", ...)` that sends the request again, once, on a new connection
    when a kept-alive one turns out closed before any answer: llama-server closes a
    connection after a few requests, which a robust client shrugs off (this is not an error
    of the server's)."""

    def __init__(self, http, body: dict):
        self.http, self.body, self.cm = http, body, None

    async def __aenter__(self):
        import httpx
        for attempt in (1, 2):
            self.cm = self.http.stream("POST", "/v1/completions", json=self.body)
            try:
                return await self.cm.__aenter__()
            except httpx.RemoteProtocolError:
                if attempt == 2:
                    raise

    async def __aexit__(self, *exc):
        return await self.cm.__aexit__(*exc)


async def grpc_stream_once(stub, req, tally: Tally, timeout: float = 120, cancel_after: int = 0) -> None:
    """One Generate call, timed; cancel_after > 0 cancels it after that many messages."""
    import grpc
    last, got, chunks, tokens = time.perf_counter(), False, 0, 0
    call = stub.Generate(req, timeout=timeout)
    try:
        async for msg in call:
            if msg.token_ids:
                now = time.perf_counter()
                (tally.gaps if got else tally.ttft).append(now - last)
                got, last, chunks, tokens = True, now, chunks + 1, tokens + len(msg.token_ids)
            if cancel_after and chunks >= cancel_after:
                call.cancel()
                tally.count("CANCELLED (by the client)")
                return
        tally.requests += 1
        tally.tokens += tokens
        tally.chunks += chunks
        tally.count("OK")
    except grpc.RpcError as e:
        tally.count(e.code().name)
    except asyncio.CancelledError:
        tally.count("CANCELLED (by the client)")


async def grpc_streams(target: str, n: int, seconds: float, prompts: list[str], new_tokens: int,
                       first: int = 0, temperature: float = 1.0) -> Tally:
    """The same scenario over gRPC Generate: n clients, back-to-back requests."""
    import grpc

    from serving.grpc.proto import pb, pb_grpc

    tally = Tally()
    turns = itertools.count(first)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.TextGenerationStub(ch)
        end = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < end:
                req = pb.GenerateRequest(prompt=prompts[next(turns) % len(prompts)], max_tokens=new_tokens,
                                         temperature=temperature, ignore_eos=True)
                await grpc_stream_once(stub, req, tally)
        await asyncio.gather(*(client() for _ in range(n)))
    return tally
