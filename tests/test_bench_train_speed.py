"""bench/train_speed.py: the tutorial-style reference is a real causal GPT, and a short
interleaved run of the bench prints its table (tiny corpus, a fraction of a second each);
--time-to-loss against bench/nanogpt_ref.py and bench/busy_machine.py print theirs."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch

from core.model_config import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
SONNETS = ROOT / "tests" / "data" / "sonnets.txt"


def load_bench():
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "bench" / "train_speed.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_reference_is_causal_and_learns():
    bench = load_bench()
    torch.manual_seed(0)
    mc = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    ref = bench.make_ref(mc, lr=3e-3, seed=0)
    x = torch.randint(0, 50, (2, 16))
    ref.model.eval()
    logits, _ = ref.model(x)
    x2 = x.clone()
    x2[:, 10:] = (x2[:, 10:] + 1) % 50                   # change only the future
    assert torch.allclose(ref.model(x2)[0][:, :10], logits[:, :10], atol=1e-6)
    assert not torch.allclose(ref.model(x2)[0][:, 10:], logits[:, 10:])
    ref.model.train()
    y = torch.roll(x, -1, dims=1)
    before = ref.model(x, y)[1].item()
    for it in range(20):
        ref.step(it, x, y)
    assert ref.model(x, y)[1].item() < before - 0.5


def test_bench_prints_table(capsys):
    bench = load_bench()
    assert bench.main(["--corpus", str(SONNETS), "--seconds", "0.3", "--chunk", "2",
                       "--eval-batches", "2", "--no-compile", "--no-bf16"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines()
            if line.startswith("| ours") or line.startswith("| reference")}
    assert set(rows) == {"ours", "reference"}
    assert rows["reference"][6].strip() == "1.00x"
    for cells in rows.values():
        assert int(cells[3]) > 0 and math.isfinite(float(cells[7]))


def test_time_to_loss_prints_both_recipes(capsys):
    """The reference and our trainer as real processes, a few steps each: the table, the
    target from the reference's final model, and our time as a ratio of its time."""
    bench = load_bench()
    assert bench.main(["--time-to-loss", "--corpus", str(SONNETS), "--fraction", "0.01", "--no-fp32-row"]) == 0
    out = capsys.readouterr().out
    rows = {cells[2].strip(): cells for cells in (line.split("|") for line in out.splitlines())
            if len(cells) > 3 and cells[1].strip() == "sonnets.txt"}
    assert set(rows) == {"reference", "ours (cold cache)", "ours (warm cache)"}
    assert rows["reference"][7].strip() == "1.00x" and rows["reference"][4].strip() == "20"
    for cells in rows.values():
        assert 0 < float(cells[9]) < 10                 # bits per character of the whole val text
    assert "the reference's time" in out or "never" in rows["ours (warm cache)"][6]


def test_busy_machine_smoke(capsys):
    """bench/busy_machine.py without busy loops, one step each: the table's three variants."""
    spec = importlib.util.spec_from_file_location("busy_machine", ROOT / "bench" / "busy_machine.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = '{"n_layer": 1, "n_head": 2, "n_embd": 32, "batch_size": 4, "vocab_size": 64}'
    assert bench.main(["--steps", "1", "--rounds", "1", "--busy", "0", "--flags", tiny]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "busy s" not in line and "---" not in line]
    assert [r.split("|")[1].strip().split(":")[0] for r in rows] == ["before", "after", "one thread (--threads 1)"]
