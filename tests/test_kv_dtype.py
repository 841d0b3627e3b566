"""`python -m export --kv-dtype fp16`: the KV cache in fp16, for both blocks and int8 weights.

The tiny trained runs (tests/conftest.py) are exported with each cache dtype by the real
exporter; ONNX Runtime (through the serving runtime) runs both graphs, greedy, past the
context (the window slides), and a real server serves the fp16-cache artifact.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from core.artifact import ArtifactConfig, load_artifact
from core.errors import UserError
from export.__main__ import main as export_main
from export.verify import FP16_TOL, KV16_TOL, argmax, ort_greedy, prompt
from export.verify import main as verify_main
from serving.engine.runtime import Runtime

STEPS = 120   # greedy steps: the tiny models' context is 32, so the window slides several times
# int8's dynamic quantization rounds each call's activations to 256 levels, and a cache rounded
# to fp16 moves some of them across a level: under int8 weights the fp16 cache moved the tiny
# models' logits by 1.4e-2 / 1.7e-2 (gpt / qwen3), as much as int8 moves fp32's (1.6e-2 /
# 1.9e-2 here). So int8's bound is the whole-fp16 file's (export/verify.py's FP16_TOL).
TOL = {"fp32": KV16_TOL, "int8": FP16_TOL}


def export(run, out, *flags) -> object:
    assert export_main(["--run", str(run), "--out", str(out), "--quantize", "int8", *flags]) == 0
    return out


@pytest.fixture(scope="module")
def arts(tiny_run, tiny_qwen3_run, tmp_path_factory):
    """{(block, kv dtype): artifact dir}, each with model.onnx and model.int8.onnx."""
    d = tmp_path_factory.mktemp("kv")
    runs = {"gpt": tiny_run, "qwen3": tiny_qwen3_run}
    return {(block, kv): export(run, d / f"{block}-{kv}", "--kv-dtype", kv)
            for block, run in runs.items() for kv in ("fp32", "fp16")}


def greedy_logits(art, precision: str, ids: list[int], path: list[int] | None = None):
    """(tokens, each step's logits): greedy, or fed `path`'s tokens (both runtimes then see
    the same sequence, so one near tie cannot make the rest differ)."""
    rt = Runtime(load_artifact(art), device="cpu", threads=1, precision=precision, slots=1)
    seen: list[np.ndarray] = []
    forced = iter(path or [])

    def choose(logits: np.ndarray) -> int:
        seen.append(logits)
        return argmax(logits) if path is None else next(forced)
    return ort_greedy(rt, ids, STEPS, choose), seen


@pytest.mark.parametrize("block", ["gpt", "qwen3"])
def test_graphs_keep_their_cache_in_fp16(arts, block):
    art = arts[block, "fp16"]
    assert json.loads((art / "model_config.json").read_text())["kv_dtype"] == "fp16"
    for name in ("model.onnx", "model.int8.onnx"):
        sess = ort.InferenceSession(str(art / name), providers=["CPUExecutionProvider"])
        past = [i.type for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
        present = [o.type for o in sess.get_outputs() if o.name.startswith("present.")]
        assert set(past) == set(present) == {"tensor(float16)"} and len(past) == 4
        assert [o.type for o in sess.get_outputs() if o.name == "logits"] == ["tensor(float)"]
    plain = ort.InferenceSession(str(arts[block, "fp32"] / "model.onnx"), providers=["CPUExecutionProvider"])
    assert plain.get_inputs()[4].type == "tensor(float)"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("block", ["gpt", "qwen3"])
def test_fp16_cache_matches_fp32_cache_over_many_greedy_steps(arts, block, precision):
    """Along the fp32 cache's greedy path (sliding the window), the fp16 cache's logits stay
    within the tolerance, and its top token is the same but where the fp32 cache's top two
    were a near tie (within twice the tolerance)."""
    ids, tol = prompt(8, load_artifact(arts[block, "fp32"]).config.vocab_size, seed=7), TOL[precision]
    path, ref = greedy_logits(arts[block, "fp32"], precision, ids)
    _, half = greedy_logits(arts[block, "fp16"], precision, ids, path)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(ref, half))
    assert 0 < worst <= tol                                # not the same graph, and close
    differ = [i for i, (a, b) in enumerate(zip(ref, half)) if a.argmax() != b.argmax()]
    assert len(differ) <= STEPS // 50, differ              # top-1 agrees at 98% of the steps at least
    for i in differ:
        assert ref[i].max() - ref[i][half[i].argmax()] <= 2 * tol   # ... and differs only at near ties


@pytest.mark.parametrize("block", ["gpt", "qwen3"])
def test_verify_passes_with_the_fp16_tolerance(arts, block, tiny_run, tiny_qwen3_run, capsys):
    run = {"gpt": tiny_run, "qwen3": tiny_qwen3_run}[block]
    assert verify_main([str(arts[block, "fp16"]), "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "KV cache types" in out and "kv_dtype fp16" in out and "parity: ok" in out


def test_server_keeps_an_fp16_cache(arts):
    from tests.serving_live import LiveServer

    art = arts["gpt", "fp16"]
    server = LiveServer(art, max_batch=4)
    try:
        cache = server.server.engine.rt.cache
        c = load_artifact(art).config
        assert cache.dtype == np.float16
        assert cache.nbytes == 2 * c.n_layer * 4 * c.kv_heads * c.context_length * c.head_dim * 2   # 2 bytes a value
        ids = prompt(8, c.vocab_size, seed=3)
        text = load_artifact(art).tokenizer.decode(ids)
        _, got, _ = server.generate(prompt=text, max_tokens=40, temperature=0.0)
        assert cache.resident_bytes() > 0
        want, _ = greedy_logits(arts["gpt", "fp16"], "fp32", load_artifact(art).tokenizer.encode(text).ids)
        assert got == want[:40]                            # the engine runs the graph as the runtime does
    finally:
        server.close()


def test_old_config_reads_as_fp32_and_a_bad_one_is_refused(arts):
    d = json.loads((arts["gpt", "fp32"] / "model_config.json").read_text())
    del d["kv_dtype"]                       # exported before the flag
    assert ArtifactConfig.from_dict(d, "old").kv_dtype == "fp32"
    with pytest.raises(UserError, match="kv_dtype 'int4' is not one of fp32, fp16"):
        ArtifactConfig.from_dict({**d, "kv_dtype": "int4"}, "bad")


def test_contradicting_flags_are_refused(tiny_run, tmp_path):
    with pytest.raises(UserError, match="--kv-dtype fp32 contradicts --dtype fp16"):
        export_main(["--run", str(tiny_run), "--out", str(tmp_path / "a"), "--dtype", "fp16", "--kv-dtype", "fp32"])
    assert not (tmp_path / "a").exists()
    for fmt in ("hf", "gguf"):
        with pytest.raises(UserError, match=f"--kv-dtype is the ONNX artifact's; --format {fmt}"):
            export_main(["--format", fmt, "--run", str(tiny_run), "--out", str(tmp_path / fmt), "--kv-dtype", "fp16"])
    done = subprocess.run([sys.executable, "-m", "export", "--run", str(tiny_run), "--out", str(tmp_path / "b"),
                           "--dtype", "fp16", "--kv-dtype", "fp32"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "contradicts" in done.stderr
