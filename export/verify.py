"""Parity report: the serving runtime (ONNX Runtime, CPU) against PyTorch for an artifact dir.

    python -m export.verify artifacts/default --run runs/default

Checks, through serving/engine/runtime.py (the code that serves): the manifest's hashes; the
graphs' KV cache types against model_config.json's kv_dtype; max |Δlogits| for prefill at
three prompt lengths and for 50 decode steps (≤ 1e-4 with an fp32 cache, ≤ 1e-2 with an fp16
one: KV16_TOL says why); identical greedy tokens for 200 steps (sliding the window past the
context like training.generate; a first difference where ONNX Runtime's top two logits are
within twice the tolerance is a near tie, reported, not a failure); prompts of different lengths prefilled together into adjacent slots,
then decoded beside a free slot, each against the sequence alone; a prompt's rest fed after
its cached start in one call (the prefix cache's extension); the fp16 file, when
present, stays close; the int8 file, when present, keeps its quality on held-out text
(export/quantize.py). Prints a table and exits 1 when a check fails (2 for bad input).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.artifact import CONFIG_NAME, KV_DTYPES, MANIFEST_NAME, check_manifest, load_artifact
from core.errors import UserError, run_main
from core.files import read_json
from core.window import generate_ids
from serving.engine.runtime import Runtime
from training.generate import generate

FP32_TOL, FP16_TOL = 1e-4, 5e-2
# An fp16 KV cache (--kv-dtype fp16): q, k, v and the attention's output are rounded to fp16,
# each value by up to 2^-11 of itself, and those errors pass through every later layer into
# the logits. Measured: 1.8e-4..1.3e-3 on the tests' 2-layer models (gpt and qwen3), 2.3e-3 on
# the 3.7M bench model over 3,200 positions (bench/kv_dtype.py). 1e-2 leaves ~4x over the
# largest, stays 5x under the whole-fp16 file's 5e-2, and a cache read in the wrong type or a
# missing cast is off by whole units.
KV16_TOL = 1e-2


@dataclass
class Check:
    name: str
    value: float
    limit: float
    detail: str = ""
    at_least: bool = False   # the value must reach the limit instead of staying under it

    @property
    def ok(self) -> bool:
        if not np.isfinite(self.value):
            return False
        return self.value >= self.limit if self.at_least else self.value <= self.limit


class TorchSteps:
    """PyTorch side: the same prefill / decode steps on one sequence."""

    def __init__(self, model):
        self.model, self.block = model, model.config.block_size

    @torch.no_grad()
    def prefill(self, ids: list[int]):
        logits, _, past = self.model(torch.tensor([ids]))
        return logits[0].numpy(), past                        # (T, V)

    @torch.no_grad()
    def decode(self, token: int, past):
        logits, _, past = self.model(torch.tensor([[token]]), past_kv=past)
        return logits[0, -1].numpy(), past                    # (V,)


def prompt(n: int, vocab: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, size=n).tolist()


def ort_prefill_all(rt: Runtime, ids: list[int], slot: int = 0) -> np.ndarray:
    """Logits at every position of one prompt prefilled into `slot`: (T, V)."""
    n = len(ids)
    return rt.forward(np.array([ids]), np.arange(n)[None], np.array([n - 1]), n, slot)[0]


def check_prefill(rt: Runtime, pt: TorchSteps, vocab: int, tol: float = FP32_TOL) -> list[Check]:
    checks = []
    for n in sorted({1, max(1, pt.block // 2), pt.block}):
        ids = prompt(n, vocab, seed=n)
        d = np.abs(ort_prefill_all(rt, ids) - pt.prefill(ids)[0]).max()
        checks.append(Check(f"prefill, prompt of {n} tokens", float(d), tol))
    return checks


def check_decode(rt: Runtime, pt: TorchSteps, vocab: int, steps: int = 50, tol: float = FP32_TOL) -> Check:
    """Both sides fed the same (PyTorch's greedy) tokens; the window slides when full."""
    past, worst = None, 0.0

    def compare(ort_logits: np.ndarray, torch_logits: np.ndarray) -> np.ndarray:
        nonlocal worst
        worst = max(worst, float(np.abs(ort_logits - torch_logits).max()))
        return torch_logits

    def prefill(tokens: list[int]) -> np.ndarray:
        nonlocal past
        logits, past = pt.prefill(tokens)
        return compare(rt.prefill(0, [tokens])[0], logits[-1])

    def decode(token: int, position: int) -> np.ndarray:
        nonlocal past
        logits, past = pt.decode(token, past)
        return compare(rt.decode(np.array([token]), np.array([position]))[0], logits)

    for _ in generate_ids(prefill, decode, argmax, prompt(min(8, pt.block), vocab, seed=1), pt.block, steps + 1):
        pass   # the last token yielded is not fed: steps + 1 tokens feed `steps`
    return Check(f"decode, {steps} steps", worst, tol)


def argmax(logits: np.ndarray) -> int:
    return int(logits.argmax())


def ort_greedy(rt: Runtime, ids: list[int], steps: int, choose=argmax) -> list[int]:
    """Greedy on slot 0 (`choose` picks from each step's logits), sliding as the server does
    (core/window.py)."""
    return list(generate_ids(lambda tokens: rt.prefill(0, [tokens])[0],
                             lambda token, position: rt.decode(np.array([token]), np.array([position]))[0],
                             choose, ids, rt.context, steps))


def check_greedy(rt: Runtime, model, vocab: int, steps: int = 200, tol: float = FP32_TOL) -> Check:
    """ONNX Runtime's greedy tokens against PyTorch's; both may pick either of two tokens whose
    logits are within 2 x tol (each side is off by up to tol), so a first difference there is
    a near tie (the sequences part, and nothing after it is compared)."""
    ids = prompt(min(8, model.config.block_size), vocab, seed=2)
    want = list(generate(model, ids, steps, temperature=0.0))
    seen: list[np.ndarray] = []
    got = ort_greedy(rt, ids, steps, lambda logits: seen.append(logits) or argmax(logits))
    diff = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), None)
    name = f"greedy tokens, {steps} steps (mismatches)"
    if diff is None:
        return Check(name, 0.0, 0, "identical")
    gap = float(seen[diff][got[diff]] - seen[diff][want[diff]])
    if gap <= 2 * tol:
        return Check(name, 0.0, 0, f"identical for {diff} steps, then a near tie (logits {gap:.2g} apart)")
    return Check(name, float(sum(a != b for a, b in zip(want, got))), 0, f"first difference at step {diff}")


def check_slots(rt: Runtime, pt: TorchSteps, vocab: int, pad_id: int, tol: float = FP32_TOL) -> Check:
    """Prompts of different lengths prefilled together into slots 1..3 (right-padded), then
    decoded as rows 0..3 with slot 0 free: each row against its sequence alone."""
    lengths = sorted({max(1, pt.block // 2), min(3, pt.block), 1}, reverse=True)
    steps = max(0, min(5, pt.block - lengths[0]))
    rows = [prompt(n, vocab, seed=10 + n) for n in lengths]
    last = rt.prefill(1, rows, pad_id)
    alone = [pt.prefill(r) for r in rows]
    worst = max(float(np.abs(last[i] - alone[i][0][-1]).max()) for i in range(len(rows)))
    logits = [a[0][-1] for a in alone]
    for _ in range(steps):
        nxt = [int(lg.argmax()) for lg in logits]
        got = rt.decode(np.array([pad_id, *nxt]), np.array([0, *[len(r) for r in rows]]))
        for i in range(len(rows)):
            logits[i], past = pt.decode(nxt[i], alone[i][1])
            alone[i] = (None, past)
            rows[i].append(nxt[i])
            worst = max(worst, float(np.abs(got[i + 1] - logits[i]).max()))
    return Check(f"slots 1-{len(rows)}, lengths {lengths}, + {steps} steps beside a free slot", worst, tol)


def check_extend(rt: Runtime, pt: TorchSteps, vocab: int, tol: float = FP32_TOL) -> Check:
    """A prompt's rest fed in one call after its cached start (`Runtime.extend`: the prefix
    cache, a speculative draft): the logits after each new token against the whole prompt's."""
    n = max(2, pt.block // 2)
    ids, cached = prompt(n, vocab, seed=5), max(1, n // 3)
    rt.prefill(0, [ids[:cached]])
    d = np.abs(rt.extend(0, cached, ids[cached:]) - pt.prefill(ids)[0][cached:]).max()
    return Check(f"extension, {n - cached} tokens after {cached} cached", float(d), tol)


def check_fp16(art, pt: TorchSteps, vocab: int) -> Check:
    """The fp16 file on the CPU: two prompts of different lengths against PyTorch fp32."""
    rt = Runtime(art, device="cpu", threads=1, precision="fp16", slots=2)
    n = max(2, pt.block // 2)
    rows = [prompt(n, vocab, seed=3), prompt(n // 2, vocab, seed=4)]
    last = rt.prefill(0, rows)
    d = max(float(np.abs(last[i] - pt.prefill(r)[0][-1]).max()) for i, r in enumerate(rows))
    return Check("fp16 file on CPU, two slots", d, FP16_TOL)


def check_cache_types(art) -> Check:
    """Each graph's past_key_values / present types against model_config.json's kv_dtype (the
    server reads the graph's; model.fp16.onnx is fp16 throughout)."""
    import onnx
    wrong = []
    for precision, name in art.config.files.items():
        want = KV_DTYPES["fp16" if precision == "fp16" else art.config.kv_dtype]
        graph = onnx.load(str(art.path / name), load_external_data=False).graph
        for v in [*graph.input, *graph.output]:
            if v.name in art.config.inputs[4:] + art.config.outputs[1:]:
                have = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
                if have != want:
                    wrong.append(f"{name}: {v.name} is {have}")
    detail = f"kv_dtype {art.config.kv_dtype}" + (f"; {wrong[0]}" if wrong else "")
    return Check("KV cache types (graph inputs/outputs differing)", float(len(wrong)), 0, detail)


def check_int8(art_dir: Path, run: Path) -> list[Check]:
    from export.quantize import MAX_BPC_RATIO, MIN_TOP1_AGREEMENT, int8_quality
    q = int8_quality(art_dir, run)
    return [Check("int8 bits/char vs fp32 (ratio)", q.bpc_int8 / q.bpc_fp32, MAX_BPC_RATIO,
                  f"{q.bpc_int8:.4f} vs {q.bpc_fp32:.4f} on {q.tokens} held-out tokens"),
            Check("int8 top-1 agreement with fp32", q.top1_agreement, MIN_TOP1_AGREEMENT, at_least=True)]


def verify(art_dir: Path, run: Path) -> list[Check]:
    from export.build import load_model_run
    if not (art_dir / CONFIG_NAME).is_file() or not (art_dir / MANIFEST_NAME).is_file():
        raise UserError(f"{art_dir} is not an artifact dir (no {CONFIG_NAME}/{MANIFEST_NAME}); "
                        f"export first: python -m export --run RUN --out {art_dir}")
    problems = check_manifest(art_dir, read_json(art_dir / MANIFEST_NAME))
    checks = [Check("manifest sha256 (files differing)", float(len(problems)), 0, "; ".join(problems))]
    if problems:
        return checks
    art = load_artifact(art_dir)
    model, config, _ = load_model_run(run)
    if art.config.model != config:
        raise UserError(f"{art_dir} was exported from a different model than {run}; pass its --run")
    checks.append(check_cache_types(art))
    rt = Runtime(art, device="cpu", threads=1, precision="fp32", slots=4)
    pt, vocab, pad = TorchSteps(model), config.vocab_size, art.config.eos_token_id
    tol = KV16_TOL if art.config.kv_dtype == "fp16" else FP32_TOL
    checks += check_prefill(rt, pt, vocab, tol)
    checks.append(check_decode(rt, pt, vocab, tol=tol))
    checks.append(check_greedy(rt, model, vocab, tol=tol))
    checks.append(check_slots(rt, pt, vocab, pad, tol))
    checks.append(check_extend(rt, pt, vocab, tol))
    if "fp16" in art.config.files:
        checks.append(check_fp16(art, pt, vocab))
    if "int8" in art.config.files:
        checks += check_int8(art_dir, run)
    return checks


def format_table(checks: list[Check]) -> str:
    w = max(len(c.name) for c in checks)
    lines = [f"{'check':<{w}}  {'value':>10}  {'limit':>10}  result"]
    for c in checks:
        limit = f"{'>= ' if c.at_least else ''}{c.limit:g}"
        lines.append(f"{c.name:<{w}}  {c.value:>10.4g}  {limit:>10}  "
                     f"{'ok' if c.ok else 'FAIL'}{'  ' + c.detail if c.detail else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.verify", description=__doc__.splitlines()[0])
    p.add_argument("art", help="artifact dir written by python -m export")
    p.add_argument("--run", required=True, help="the training run dir it was exported from")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    checks = verify(Path(a.art), Path(a.run))
    print(format_table(checks))
    failed = [c.name for c in checks if not c.ok]
    print(f"parity: {'FAILED: ' + ', '.join(failed) if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
