"""Parity report: ONNX Runtime (CPU) against PyTorch for an exported artifact dir.

    python -m export.verify artifacts/default --run runs/default

Checks: the manifest's hashes; max |Δlogits| for prefill at three prompt lengths and for
50 decode steps (fp32 ≤ 1e-4); identical greedy tokens for 200 steps (sliding the window
past the context like training.generate); a left-padded batch gives the same logits as
each sequence alone; the fp16 file, when present, loads and stays close. Prints a table
and exits 1 when a check fails (2 for bad input).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.cli import UserError, run_main
from training.generate import generate
from training.model_config import window_keep

from export.artifact import CONFIG_NAME, MANIFEST_NAME, check_manifest
from export.ort_runner import OrtGPT, position_ids_for

FP32_TOL, FP16_TOL = 1e-4, 5e-2


@dataclass
class Check:
    name: str
    value: float
    limit: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.value)) and self.value <= self.limit


class TorchSteps:
    """PyTorch side with the same prefill/decode/slide steps as OrtGPT."""

    def __init__(self, model):
        self.model, self.block = model, model.config.block_size

    @torch.no_grad()
    def prefill(self, ids: np.ndarray, mask: np.ndarray | None = None):
        ids_t = torch.from_numpy(np.atleast_2d(ids).astype(np.int64))
        mask_t = torch.ones_like(ids_t) if mask is None else torch.from_numpy(mask)
        pos = torch.from_numpy(position_ids_for(mask_t.numpy()))
        logits, _, past = self.model(ids_t, past_kv=None, position_ids=pos, attention_mask=mask_t)
        return logits.numpy(), past

    @torch.no_grad()
    def decode(self, next_ids: np.ndarray, mask: np.ndarray, past):
        pos = torch.from_numpy((mask.sum(1, keepdims=True) - 1).astype(np.int64))
        ids = torch.from_numpy(np.asarray(next_ids, np.int64).reshape(-1, 1))
        logits, _, past = self.model(ids, past_kv=past, position_ids=pos,
                                     attention_mask=torch.from_numpy(mask))
        return logits.numpy(), past


def prompt(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(1, n), dtype=np.int64)


def check_prefill(ort_gpt: OrtGPT, pt: TorchSteps, vocab: int) -> list[Check]:
    checks = []
    for n in sorted({1, max(1, pt.block // 2), pt.block}):
        ids = prompt(n, vocab, seed=n)
        d = np.abs(ort_gpt.prefill(ids)[0] - pt.prefill(ids)[0]).max()
        checks.append(Check(f"prefill, prompt of {n} tokens", float(d), FP32_TOL))
    return checks


def check_decode(ort_gpt: OrtGPT, pt: TorchSteps, vocab: int, steps: int = 50) -> Check:
    """Both sides fed the same (PyTorch's greedy) tokens; the window slides when full."""
    tokens = list(prompt(min(8, pt.block), vocab, seed=1)[0])
    (lo, po), (lt, pt_past) = ort_gpt.prefill(np.array([tokens])), pt.prefill(np.array([tokens]))
    worst, keep = 0.0, window_keep(pt.block)
    for _ in range(steps):
        nxt = int(lt[0, -1].argmax())
        tokens.append(nxt)
        if len(tokens) > pt.block:
            tokens = tokens[-keep:]
            (lo, po), (lt, pt_past) = ort_gpt.prefill(np.array([tokens])), pt.prefill(np.array([tokens]))
        else:
            mask = np.ones((1, len(tokens)), np.int64)
            (lo, po), (lt, pt_past) = (ort_gpt.decode(np.array([nxt]), mask, po),
                                       pt.decode(np.array([nxt]), mask, pt_past))
        worst = max(worst, float(np.abs(lo[0, -1] - lt[0, -1]).max()))
    return Check(f"decode, {steps} steps", worst, FP32_TOL)


def check_greedy(ort_gpt: OrtGPT, model, vocab: int, steps: int = 200) -> Check:
    ids = list(prompt(min(8, model.config.block_size), vocab, seed=2)[0])
    want = list(generate(model, ids, steps, temperature=0.0))
    got = list(ort_gpt.generate(ids, steps))
    diff = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), None)
    detail = "identical" if diff is None else f"first difference at step {diff}"
    return Check(f"greedy tokens, {steps} steps (mismatches)", float(sum(a != b for a, b in zip(want, got))), 0, detail)


def check_padding(ort_gpt: OrtGPT, pt: TorchSteps, vocab: int, pad_id: int) -> Check:
    """A left-padded batch (prefill + decode steps) against each sequence run alone."""
    lengths = sorted({max(1, pt.block // 2), min(3, pt.block), 1}, reverse=True)
    steps = max(0, min(5, pt.block - lengths[0]))
    rows = [prompt(n, vocab, seed=10 + n)[0] for n in lengths]
    width = lengths[0]
    ids = np.full((len(rows), width), pad_id, np.int64)
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row):], mask[r, width - len(row):] = row, 1
    logits, past = ort_gpt.prefill(ids, mask)
    alone = [pt.prefill(row[None]) for row in rows]
    worst = max(float(np.abs(logits[r, width - len(row):] - alone[r][0][0]).max())
                for r, row in enumerate(rows))
    for _ in range(steps):
        nxt = np.array([int(a[0][0, -1].argmax()) for a in alone])
        mask = np.concatenate([mask, np.ones((len(rows), 1), np.int64)], axis=1)
        logits, past = ort_gpt.decode(nxt, mask, past)
        for r in range(len(rows)):
            one = np.ones((1, len(rows[r]) + 1), np.int64)
            rows[r] = np.append(rows[r], nxt[r])
            alone[r] = pt.decode(nxt[r:r + 1], one, alone[r][1])
            worst = max(worst, float(np.abs(logits[r, -1] - alone[r][0][0, -1]).max()))
    return Check(f"left-padded batch {lengths} + {steps} steps vs alone", worst, FP32_TOL)


def check_fp16(art: Path, pt: TorchSteps, vocab: int, pad_id: int) -> Check:
    """The fp16 file on the CPU: a left-padded batch of two prompts against PyTorch fp32."""
    ort16 = OrtGPT(art, model_file=json.loads((art / CONFIG_NAME).read_text())["onnx"]["fp16"])
    n = max(2, pt.block // 2)
    ids = np.concatenate([prompt(n, vocab, seed=3), prompt(n, vocab, seed=4)])
    ids[1, : n // 2] = pad_id
    mask = (np.arange(n)[None] >= np.array([[0], [n // 2]])).astype(np.int64)
    got = ort16.prefill(ids, mask)[0].astype(np.float32)
    d = max(np.abs(got[0] - pt.prefill(ids[:1])[0][0]).max(),
            np.abs(got[1, n // 2:] - pt.prefill(ids[1:, n // 2:])[0][0]).max())
    return Check("fp16 file on CPU, padded prefill", float(d), FP16_TOL)


def verify(art: Path, run: Path) -> list[Check]:
    from export.__main__ import load_gpt
    if not (art / CONFIG_NAME).is_file() or not (art / MANIFEST_NAME).is_file():
        raise UserError(f"{art} is not an artifact dir (no {CONFIG_NAME}/{MANIFEST_NAME}); "
                        f"export first: python -m export --run RUN --out {art}")
    problems = check_manifest(art)
    checks = [Check("manifest sha256 (files differing)", float(len(problems)), 0, "; ".join(problems))]
    if problems:
        return checks
    model, config, _ = load_gpt(run)
    meta = json.loads((art / CONFIG_NAME).read_text())
    if meta["model_config"] != config.to_dict():
        raise UserError(f"{art} was exported from a different model than {run}; pass its --run")
    ort_gpt, pt, vocab = OrtGPT(art), TorchSteps(model), config.vocab_size
    checks += check_prefill(ort_gpt, pt, vocab)
    checks.append(check_decode(ort_gpt, pt, vocab))
    checks.append(check_greedy(ort_gpt, model, vocab))
    checks.append(check_padding(ort_gpt, pt, vocab, meta["pad_token_id"]))
    if meta["onnx"]["fp16"]:
        checks.append(check_fp16(art, pt, vocab, meta["pad_token_id"]))
    return checks


def format_table(checks: list[Check]) -> str:
    w = max(len(c.name) for c in checks)
    lines = [f"{'check':<{w}}  {'value':>10}  {'limit':>8}  result"]
    for c in checks:
        lines.append(f"{c.name:<{w}}  {c.value:>10.3g}  {c.limit:>8g}  "
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
