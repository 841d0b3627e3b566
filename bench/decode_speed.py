"""Decode speed: the serving runtime against Hugging Face generate and CTranslate2, fp32 and int8.

    .venv/bin/python bench/decode_speed.py [--threads 1 2] [--batches 1 16 32 64]
        [--engines a d e a8 e8] [--new-tokens 200] [--pasts 16 64 128 240] [--run RUN]

(a) ours: serving.engine.runtime.Runtime (prompts prefilled into slots 0..B-1, then Runtime.decode
steps); (d) Hugging Face GPT2LMHeadModel.generate; (e) CTranslate2 float32; (a8) (a) on the
model.int8.onnx that `python -m export --quantize int8` writes; (e8) CTranslate2 int8. The
old graph's recompute baselines are gone: the fixed-buffer graph has no empty-past call.

All engines run the same weights (random, `frankenstein` shape: 4 layers, 4 heads, 256
wide, context 256, unless --run), greedy from the same 16-token prompts, on --threads
threads (tables for each value). After an untimed warm-up, engines run round-robin (each
repeat runs every engine once, so a burst of load hits all alike): best wall and CPU time.
The step table times one decode step of (a) at batch 32 with the caches holding --pasts
tokens, splits it with ONNX Runtime's profiler into GroupQueryAttention and the rest, and
divides the K/V bytes attention reads by its time. Compare ratios within one run.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import shutil
import sys
import tempfile
import time
import timeit
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.machine import describe_cpu  # noqa: E402
from core.artifact import Artifact, load_artifact  # noqa: E402
from core.errors import UserError, run_main  # noqa: E402
from core.run_dir import CKPT, TOKENIZER  # noqa: E402
from serving.engine.runtime import Runtime, session_options  # noqa: E402
from training.model import GPT, count_params  # noqa: E402

ENGINES = {"a": "(a) ours fp32", "d": "(d) HF generate fp32", "e": "(e) CTranslate2 float32",
           "a8": "(a8) ours int8", "e8": "(e8) CTranslate2 int8"}
SAME_AS = {"d": "a", "e": "a", "a8": "a", "e8": "e"}    # whose greedy tokens each is compared with
RATIOS = (("a", "d"), ("a", "e"), ("a8", "e8"), ("a8", "a"))
PROMPT_LEN, STEP_BATCH, WARMUP = 16, 32, 5


# --- the model, once, in every engine's format --------------------------------------------

def random_run(out: Path, seed: int = 0) -> Path:
    """A run dir of random frankenstein-shaped weights, with a local corpus (random text over
    the char vocabulary, 354 ids) for export's int8 quality check to score."""
    from core.model_config import ModelConfig
    from training.checkpoint import save_checkpoint
    from training.model import build_model
    from training.tokenizer import build_char_tokenizer
    alphabet = "".join(map(chr, range(32, 127))) + "\n\t"
    out.mkdir(parents=True)
    rnd = random.Random(seed)
    (out / "corpus.txt").write_text("".join(rnd.choice(alphabet) for _ in range(40_000)))
    tok = build_char_tokenizer(alphabet)
    tok.save(str(out / TOKENIZER))
    torch.manual_seed(seed)
    mc = ModelConfig(vocab_size=tok.get_vocab_size(), block_size=256, n_layer=4, n_head=4, n_embd=256)
    save_checkpoint(out / CKPT, {"model_config": mc.to_dict(), "model": build_model(mc).state_dict(),
                                      "train_config": {"corpus": str(out / "corpus.txt")}})
    return out


def export_artifact(run: Path, out: Path, int8: bool) -> Artifact:
    """What `python -m export --run RUN --out ART [--quantize int8]` writes, loaded as the server does."""
    from export.build import ExportConfig, export_run
    export_run(ExportConfig(run=str(run), out=str(out), quantize="int8" if int8 else None))
    return load_artifact(out)


def to_hf(model: GPT):
    """The same weights in transformers' GPT2LMHeadModel, written by `python -m export --format hf`'s code."""
    from transformers import GPT2LMHeadModel

    from export.hf import save_model
    with tempfile.TemporaryDirectory(prefix="decode-bench-hf-") as d:
        save_model(model, Path(d), eos=0)
        return GPT2LMHeadModel.from_pretrained(d).eval()


def to_ctranslate2(hf, out: Path, vocab_size: int) -> Path:
    """Convert the HF model (float32 weights); the vocabulary is t0..tN, ids fed as tokens."""
    import transformers
    from ctranslate2.converters import TransformersConverter
    vocab = SimpleNamespace(bos_token="t0", eos_token="t0", unk_token="t0",
                            get_vocab=lambda: {f"t{i}": i for i in range(vocab_size)})

    class Converter(TransformersConverter):
        def load_model(self, model_class, path, **kwargs):
            return hf

        def load_tokenizer(self, tokenizer_class, path, **kwargs):
            return vocab

    hf.config.save_pretrained(out / "hf")  # the converter reads the config from here
    transformers.logging.set_verbosity_error()   # the converter reads a deprecated config field
    Converter(str(out / "hf")).convert(str(out / "ct2"), force=True)
    return out / "ct2"


# --- the engines: each takes prompts (B, P) and returns the new ids (B, N) -----------------

def ours(rt: Runtime, prompts: np.ndarray, n: int) -> np.ndarray:
    B, P = prompts.shape
    out, lengths = np.empty((B, n), np.int64), np.full(B, P)
    logits = rt.prefill(0, prompts.tolist())
    for t in range(n):
        out[:, t] = logits.argmax(-1)
        if t + 1 < n:
            logits = rt.decode(out[:, t], lengths)
            lengths += 1
    return out


@torch.no_grad()
def hf_generate(hf, prompts: np.ndarray, n: int) -> np.ndarray:
    ids = torch.from_numpy(prompts)
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                      min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0)
    return out[:, prompts.shape[1]:].numpy()


def ct2_generate(gen, prompts: np.ndarray, n: int) -> np.ndarray:
    start = [[f"t{i}" for i in row] for row in prompts]
    res = gen.generate_batch(start, max_length=n, min_length=n, sampling_topk=1,
                             include_prompt_in_result=False, end_token=[])
    return np.array([r.sequences_ids[0] for r in res])


def make_engines(names, art: Artifact, hf, ct2_dir: Path | None, threads: int, slots: int):
    """({name: fn(prompts, n)}, the compute type CTranslate2's int8 resolves to), on `threads`."""
    engines, ct2_int8 = {}, None
    torch.set_num_threads(threads)
    for k in names:
        if k in ("a", "a8"):
            rt = Runtime(art, device="cpu", threads=threads, precision="int8" if k == "a8" else "fp32", slots=slots)
            engines[k] = lambda p, n, rt=rt: ours(rt, p, n)
        elif k == "d":
            engines[k] = lambda p, n: hf_generate(hf, p, n)
        else:
            import ctranslate2
            gen = ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type="int8" if k == "e8" else "float32",
                                        intra_threads=threads, inter_threads=1)
            ct2_int8 = gen.compute_type if k == "e8" else ct2_int8
            engines[k] = lambda p, n, gen=gen: ct2_generate(gen, p, n)
    return {k: engines[k] for k in ENGINES if k in engines}, ct2_int8


def timed(engines: dict, prompts: np.ndarray, n: int, repeats: int) -> tuple[dict, dict, dict]:
    """Best wall and best CPU seconds (all threads) of each engine, and its output. A short
    untimed run first (HF builds its caches, CTranslate2 its workspace), then round-robin."""
    best = {k: float("inf") for k in engines}
    best_cpu, outs = dict(best), {}
    for fn in engines.values():
        fn(prompts, 4)
    for _ in range(repeats):
        for k, fn in engines.items():
            t, c = time.perf_counter(), time.process_time()
            outs[k] = fn(prompts, n)
            best[k] = min(best[k], time.perf_counter() - t)
            best_cpu[k] = min(best_cpu[k], time.process_time() - c)
    return best, best_cpu, outs


def speed_tables(engines: dict, vocab: int, batches, n: int, repeats: int) -> None:
    """Per batch and engine: tok/s, tok per CPU-second, busy cores, greedy agreement; then
    the ratios of ours to the others."""
    print("| batch | engine | tok/s | tok/CPU-s | CPU-s/s | same greedy tokens as |")
    print("| ---: | :--- | ---: | ---: | ---: | :--- |")
    rows = []
    for B in batches:
        prompts = np.random.default_rng(B).integers(0, vocab, (B, PROMPT_LEN))
        wall, cpu, outs = timed(engines, prompts, n, repeats)
        for k in engines:
            ref = SAME_AS.get(k)
            same = f"({ref}) {(outs[k] == outs[ref]).mean():.0%}" if ref in outs else "-"
            print(f"| {B} | {ENGINES[k]} | {B * n / wall[k]:,.0f} | {B * n / cpu[k]:,.0f} | "
                  f"{cpu[k] / wall[k]:.2f} | {same} |", flush=True)
        rows.append((B, wall, cpu))
    pairs = [(a, b) for a, b in RATIOS if a in engines and b in engines]
    if pairs:
        print("\nhow many times faster (wall; per CPU-second in brackets):\n")
        print("| batch | " + " | ".join(f"({a}) vs ({b})" for a, b in pairs) + " |")
        print("| ---: |" + " ---: |" * len(pairs))
        for B, wall, cpu in rows:
            print(f"| {B} | " + " | ".join(f"{wall[b] / wall[a]:.2f}x ({cpu[b] / cpu[a]:.2f}x)" for a, b in pairs) + " |")


# --- one decode step at a fixed past length -----------------------------------------------

def step_at(rt: Runtime, first: int, tokens: np.ndarray, past: int) -> None:
    """Runtime.decode on slots first..first+B-1 whose caches hold `past` tokens (decode always
    starts at slot 0; this is its call with a slot offset). The new token's column is
    rewritten in place each time, so the past stays `past` however often it runs."""
    lengths = np.full(len(tokens), past)
    rt.forward(tokens[:, None], lengths[:, None], lengths, past + 1, first, rt.session)


def run_steps(rt: Runtime, pasts, tokens: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(wall, CPU) seconds of each step, in `order` (indices into `pasts`)."""
    times = np.zeros((len(order), 2))
    for j, i in enumerate(order):
        t, c = time.perf_counter(), time.process_time()
        step_at(rt, i * len(tokens), tokens, pasts[i])
        times[j] = time.perf_counter() - t, time.process_time() - c
    return times


def profile_steps(rt: Runtime, art: Artifact, threads: int, pasts, tokens: np.ndarray, order: np.ndarray,
                  tmp: Path) -> np.ndarray:
    """(GroupQueryAttention kernels, other kernels, the ORT run) ms of each step, from ONNX
    Runtime's profiler on a session with the runtime's own options, swapped in for these
    steps (Runtime has no profiling switch)."""
    import onnxruntime as ort
    so = session_options(threads)
    so.enable_profiling, so.profile_file_prefix = True, str(tmp / "profile")
    plain = rt.session
    rt.session = ort.InferenceSession(str(art.onnx_path("fp32")), so, providers=["CPUExecutionProvider"])
    try:
        run_steps(rt, pasts, tokens, np.concatenate([np.zeros(WARMUP, int), order]))
        events = json.loads(Path(rt.session.end_profiling()).read_text())
    finally:
        rt.session = plain
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    starts = [e["ts"] for e in runs]
    per_run = np.zeros((len(runs), 3))
    per_run[:, 2] = [e["dur"] for e in runs]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            j = bisect.bisect_right(starts, e["ts"]) - 1
            per_run[j, 0 if e["args"].get("op_name") == "GroupQueryAttention" else 1] += e["dur"]
    return per_run[WARMUP:] / 1e3


def read_gb_per_s(threads: int, mb: int = 64) -> float:
    """GB/s of torch summing a float32 array of `mb` MB on `threads` threads: how fast this
    machine streams memory right now, for scale."""
    torch.set_num_threads(threads)
    x = torch.ones(mb * 2**20 // 4)
    return x.numel() * 4 / min(timeit.repeat(x.sum, number=1, repeat=5)) / 1e9


def step_table(art: Artifact, threads: int, pasts, steps: int, tmp: Path) -> None:
    c = art.config
    rt = Runtime(art, device="cpu", threads=threads, slots=STEP_BATCH * len(pasts))
    rng = np.random.default_rng(1)
    for i, p in enumerate(pasts):   # each past its own 32 slots, filled by one prefill
        rt.prefill(i * STEP_BATCH, rng.integers(0, c.vocab_size, (STEP_BATCH, p)).tolist())
    tokens = rng.integers(0, c.vocab_size, STEP_BATCH)
    order = np.tile(np.repeat(np.arange(len(pasts)), 10), max(1, steps // 10))  # turns, so load hits all alike
    times = run_steps(rt, pasts, tokens, order)
    prof = profile_steps(rt, art, threads, pasts, tokens, order, tmp)
    med = {p: np.median(times[order == i], axis=0) for i, p in enumerate(pasts)}
    prof = {p: np.median(prof[order == i], axis=0) for i, p in enumerate(pasts)}
    n = len(order) // len(pasts)
    print(f"\none decode step of (a) at batch {STEP_BATCH}, {threads} thread(s), medians of {n}; profiled "
          f"(the profiler adds its own cost): GroupQueryAttention kernels ({c.n_layer} layers), the other "
          f"kernels, the whole ORT run; for scale, torch sums a 64 MB array at {read_gb_per_s(threads):.1f} "
          f"GB/s here on as many threads\n")
    print(f"| past | step ms (CPU ms) | vs past {pasts[0]} (CPU) | profiled ms: attention + other kernels "
          f"< run | attention share | K/V read per step | attention GB/s |")
    print("| ---: | ---: | ---: | :--- | ---: | ---: | ---: |")
    for p in pasts:
        (wall, cpu), (attn, other, run) = med[p], prof[p]
        kv = STEP_BATCH * c.n_layer * 2 * c.n_head * p * c.head_dim * 4
        print(f"| {p} | {wall * 1e3:.2f} ({cpu * 1e3:.2f}) | {wall / med[pasts[0]][0]:.2f}x "
              f"({cpu / med[pasts[0]][1]:.2f}x) | {attn:.2f} + {other:.2f} < {run:.2f} | "
              f"{attn / (attn + other):.0%} | {kv / 1e6:.1f} MB | {kv / attn / 1e6:.1f} |", flush=True)


# --- conditions and main --------------------------------------------------------------------

def header(model: GPT, weights: str, n: int, threads: int, ct2_int8: str | None) -> str:
    c = model.config
    versions = ", ".join(f"{m} {sys.modules[m].__version__}" for m in ("onnxruntime", "transformers", "ctranslate2")
                         if m in sys.modules)
    return (f"\n**{threads} thread{'s' * (threads > 1)}** | {c.n_layer} layers, {c.n_head} heads, {c.n_embd} "
            f"wide, context {c.block_size}, vocab {c.vocab_size}, {count_params(model) / 1e6:.2f}M params, "
            f"{weights}; {n} new tokens after a {PROMPT_LEN}-token prompt, greedy | {describe_cpu()} | load "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} | {versions}"
            f"{f' | CTranslate2 int8 runs as {ct2_int8}' if ct2_int8 else ''}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="threads for every engine; a table each")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 32, 64])
    p.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3, help="best of, round-robin")
    p.add_argument("--pasts", type=int, nargs="*", default=[16, 64, 128, 240],
                   help=f"past lengths of the decode-step table at batch {STEP_BATCH} (none: no table)")
    p.add_argument("--steps", type=int, default=100, help="decode steps timed, and profiled, per past")
    p.add_argument("--run", help="a training run dir: its weights instead of random ones")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from training.checkpoint import load_run
    tmp = Path(tempfile.mkdtemp(prefix="decode-bench-"))
    try:
        run = Path(a.run) if a.run else random_run(tmp / "run")
        model = load_run(run)[0]
        c = model.config
        if PROMPT_LEN + a.new_tokens > c.block_size or not all(0 < p < c.block_size for p in a.pasts):
            raise UserError(f"--new-tokens and --pasts must stay inside the context of {c.block_size} tokens")
        art = export_artifact(run, tmp / "art", int8="a8" in a.engines)
        hf = to_hf(model) if {"d", "e", "e8"} & set(a.engines) else None
        ct2_dir = to_ctranslate2(hf, tmp, c.vocab_size) if {"e", "e8"} & set(a.engines) else None
        for threads in a.threads:
            engines, ct2_int8 = make_engines(a.engines, art, hf, ct2_dir, threads, max(a.batches))
            print(header(model, f"weights of {run}" if a.run else "random weights", a.new_tokens, threads, ct2_int8))
            speed_tables(engines, c.vocab_size, a.batches, a.new_tokens, a.repeats)
            if a.pasts:
                step_table(art, threads, a.pasts, a.steps, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_main(main)
