"""The two blocks in the server: KV bytes per token, server memory at 64 slots and
throughput at 1 and 32 streams, GPT-2's block against Qwen3's at the same width, in one run.

    python bench/blocks.py                                # ~5 min on 2 cores
    python bench/blocks.py --kv-heads 2,1 --streams 1,32 --seconds 12

Grouped KV heads are what the modern block changes for a server: every slot holds
2 x layers x kv_heads x head_dim numbers per token, so a block with n_head / n_kv_head fewer
KV heads fits that many more tokens in the same memory, and each decode step reads that much
less. Untrained weights (speed depends on the shape alone) at bench/models.py's shape:
4 layers, 256 wide, 4 heads of 64, context 256, its BPE tokenizer (2,000 tokens); `gpt`, then
`qwen3` with each `--kv-heads` (4 = one KV head per query head), all exported by
`python -m export`. Each runs as `python -m serving --max-batch 64` (bench/load.py's start)
and gets bench/clients.py's OpenAI streams: 64-token prompts, all different, 128 tokens
forced, greedy, no speculation (random weights repeat themselves); scenarios take turns in `--rounds` rounds. Reported per model: parameters,
KV bytes per token (fp32, as serving's KVCache allocates), the 64 slots' KV cache, the
server's peak resident memory (VmHWM, after every scenario ran: 64 streams touch every slot),
tokens/s per stream count and the ratio to gpt's.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script too
from bench.clients import Tally  # noqa: E402
from bench.load import DISTINCT, SLOTS, measure, rss_mb, start_server  # noqa: E402
from bench.machine import describe_cpu  # noqa: E402
from bench.models import bench_model  # noqa: E402
from core.files import cache_dir  # noqa: E402
from core.net import free_port  # noqa: E402
from core.run_dir import CKPT, TOKENIZER  # noqa: E402


def build(name: str, like: Path, **overrides) -> Path:
    """An artifact of `like`'s shape and tokenizer with random weights (cached per settings)."""
    import torch

    from core.model_config import ModelConfig
    from training.checkpoint import save_checkpoint
    from training.model import build_model
    code = b"".join((ROOT / f).read_bytes() for f in ("export/onnx_graph.py", "training/qwen3.py"))
    home = cache_dir() / "bench" / "blocks" / f"{name}-{hashlib.sha256(code).hexdigest()[:10]}"   # rebuilt when they change
    if (home / "art" / "manifest.json").is_file():
        return home / "art"
    cfg = ModelConfig(**{**torch.load(like / CKPT, weights_only=True)["model_config"], **overrides})
    (home / "run").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_checkpoint(home / "run" / CKPT, {"model_config": cfg.to_dict(), "model": build_model(cfg).state_dict()})
    (home / "run" / TOKENIZER).write_bytes((like / TOKENIZER).read_bytes())
    subprocess.run([sys.executable, "-m", "export", "--run", str(home / "run"), "--out", str(home / "art"),
                    "--force"], check=True, cwd=ROOT, capture_output=True)
    return home / "art"


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Served:
    def __init__(self, label: str, art: Path):
        from core.artifact import load_artifact
        from bench.load import Peer
        self.label, cfg = label, load_artifact(art).config
        m = cfg.model
        self.params, self.kv_heads = cfg.params, m.kv_heads
        self.kv_bytes = 2 * m.n_layer * m.kv_heads * m.head_dim * 4               # per token, fp32
        self.kv_slots_mb = self.kv_bytes * m.block_size * SLOTS / 2 ** 20
        http = free_port()
        # --speculate 0: random weights repeat themselves, which drafts would feed on; what
        # compares is the shape's decode step
        self.proc, _, _ = start_server(art, ["--max-batch", str(SLOTS), "--precision", "fp32", "--speculate", "0"], http)
        self.loaded_mb = rss_mb(self.proc.pid)
        self.peer = Peer(label, label, f"http://127.0.0.1:{http}", self.proc.pid, None)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/blocks.py", description=__doc__.splitlines()[0])
    p.add_argument("--kv-heads", default="4,2,1", help="qwen3's n_kv_head values (of 4 query heads)")
    p.add_argument("--streams", default="1,32,64")
    p.add_argument("--seconds", type=float, default=12.0, help="per scenario, over all rounds")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    streams = [int(x) for x in args.streams.split(",")]
    base = bench_model("random")
    arts = {"gpt": base.onnx}
    for kv in (int(x) for x in args.kv_heads.split(",")):
        arts[f"qwen3 kv{kv}"] = build(f"qwen3-kv{kv}", base.run, model="qwen3", n_kv_head=kv)
    prompts = base.prompts(64, DISTINCT)
    served = [Served(label, art) for label, art in arts.items()]
    try:
        tallies = {(s.label, n): Tally() for s in served for n in streams}
        walls = dict.fromkeys(tallies, 0.0)
        order = [(s, n) for n in streams for s in served]
        share = DISTINCT // (args.rounds * len(order))
        for r in range(args.rounds):
            for i, (s, n) in enumerate(order if r % 2 == 0 else order[::-1]):
                tally, wall, _ = measure(s.peer, "http", n, args.seconds / args.rounds, prompts, 128,
                                         first=(r * len(order) + i) * share)
                tallies[s.label, n].add(tally)
                walls[s.label, n] += wall
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        print(f"\n$ python bench/blocks.py {' '.join(argv if argv is not None else sys.argv[1:])}\n"
              f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, "
              f"{describe_cpu()}, load {os.getloadavg()[0]:.1f}; 4 layers, 256 wide, 4 heads of 64, context 256, "
              f"{SLOTS} slots; {args.seconds:.0f} s per scenario in {args.rounds} rounds\n")
        rate = {k: tallies[k].row(walls[k])["tok_s"] for k in tallies}
        head = ["block", "params", "KV bytes/token", "vs gpt", "KV at 64 slots MB", "RSS loaded MB",
                "RSS peak MB", *(f"tok/s {n} stream{'s' * (n > 1)} (vs gpt)" for n in streams), "errors"]
        print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
        gpt = served[0]
        for s in served:
            errors = sum(tallies[s.label, n].row(walls[s.label, n])["errors"] for n in streams)
            cells = [s.label, f"{s.params:,}", f"{s.kv_bytes:,}", f"{s.kv_bytes / gpt.kv_bytes:.2f}x",
                     f"{s.kv_slots_mb:.1f}", f"{s.loaded_mb:.0f}", f"{peak_mb(s.proc.pid):.0f}",
                     *(f"{rate[s.label, n]:,.0f} ({rate[s.label, n] / rate[gpt.label, n]:.2f}x)" for n in streams),
                     str(errors)]
            print("| " + " | ".join(cells) + " |")
    finally:
        for s in served:
            s.stop()
    return 0


if __name__ == "__main__":
    t0 = time.time()
    code = main()
    print(f"\n({time.time() - t0:.0f} s)")
    sys.exit(code)
