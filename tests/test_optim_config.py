"""Training settings and optimizers: flags come from the dataclasses, Muon orthogonalizes
in the dtype it is given, the schedule, and the fixed validation windows."""
import dataclasses

import pytest
import torch

from core.model_config import ModelConfig
from training.config import MODEL_FIELDS, PRESETS, TrainConfig, build_parser, parse_flags, resolve
from training.data import spread_batches
from training.model import GPT
from training.optim import Muon, build_optimizers, lr_factor, orthogonalize, set_lr


def test_every_setting_is_a_flag():
    dests = {a.dest for a in build_parser()._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= dests
    assert set(MODEL_FIELDS) <= dests


def test_parse_flags_keeps_only_what_was_typed():
    flags, resume = parse_flags(["--lr", "3e-3", "--n-layer", "2", "--compile", "--optimizer", "adamw"])
    assert flags == {"lr": 3e-3, "n_layer": 2, "compile": True, "optimizer": "adamw"} and not resume
    model_fields, tc = resolve(flags, "cpu-small")
    assert model_fields["n_layer"] == 2 and model_fields["n_embd"] == PRESETS["cpu-small"]["n_embd"]
    assert tc.lr == 3e-3 and tc.compile and tc.preset == "cpu-small"
    assert flags == {"lr": 3e-3, "n_layer": 2, "compile": True, "optimizer": "adamw"}  # not mutated


def test_a_preset_of_the_modern_block_trains_gpt2s_when_asked():
    """cpu-small is qwen3 with grouped KV heads; `--model gpt` keeps its shape and recipe but
    not the settings only qwen3 takes (ModelConfig would refuse them for gpt)."""
    from core.model_config import ModelConfig
    model_fields, _ = resolve({}, "cpu-small")
    assert model_fields["model"] == "qwen3" and model_fields["n_kv_head"] == 2
    model_fields, tc = resolve({"model": "gpt"}, "cpu-small")
    assert model_fields["model"] == "gpt" and "n_kv_head" not in model_fields
    assert model_fields["n_embd"] == PRESETS["cpu-small"]["n_embd"] and tc.optimizer == "muon"
    ModelConfig(vocab_size=100, **model_fields)   # a valid GPT-2 shape
    model_fields, _ = resolve({"model": "gpt", "n_kv_head": 2}, "cpu-small")   # typed: kept, refused later
    assert model_fields["n_kv_head"] == 2


@pytest.mark.parametrize("shape", [(96, 32), (32, 96), (32, 32)])
def test_orthogonalize_flattens_the_singular_values(shape):
    torch.manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    g = u @ torch.diag(torch.logspace(0, 1, k)) @ v.T          # singular values 1..10
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.min() > 0.5 and s.max() < 1.3   # the quintic's band, not exactly 1 (by design)


def test_muon_for_block_matrices_adamw_for_the_rest():
    model = GPT(ModelConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=16))
    muon, adamw = build_optimizers(model, TrainConfig(optimizer="muon"), "cpu")
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert in_muon == {id(p) for n, p in named.items() if n.startswith("blocks.") and p.dim() == 2}
    assert id(named["wte.weight"]) not in in_muon
    assert len(build_optimizers(model, TrainConfig(optimizer="adamw"), "cpu")) == 1
    lr = set_lr([muon, adamw], TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02), 1.0)
    assert lr == 1e-3 and muon.param_groups[0]["lr"] == 0.02


def test_muon_learns():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16))
    optimizers = build_optimizers(model, TrainConfig(optimizer="muon", lr=3e-3, muon_lr=0.02), "cpu")
    x = torch.randint(0, 20, (4, 8))
    first = model(x, x)[1].item()
    for _ in range(30):
        model(x, x)[1].backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad()
    assert model(x, x)[1].item() < first - 1.0
    assert isinstance(optimizers[0], Muon)


def test_schedule_warms_up_then_decays_to_the_floor():
    tc = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100)
    factors = [lr_factor(i, tc) for i in range(101)]
    assert factors[0] < factors[5] < factors[10] == pytest.approx(1.0)
    assert factors[100] == pytest.approx(0.1) and all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_spread_batches_are_fixed_and_split_across_ranks():
    data = torch.arange(1000)
    one = spread_batches(data, 8, 4, 3)
    assert len(one) == 3 and one[0][0].shape == (4, 8)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, spread_batches(data, 8, 4, 3)))
    torch.testing.assert_close(one[0][1], one[0][0] + 1)
    # two ranks together cover the windows of the single-process set of twice the size
    ranks = [spread_batches(data, 8, 4, 3, rank=r, world=2) for r in (0, 1)]
    starts = sorted(int(x[0]) for r in ranks for b in r for x in b[0])
    assert starts == sorted(int(x[0]) for b in spread_batches(data, 8, 8, 3) for x in b[0])
