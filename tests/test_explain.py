"""explain: the introspection maths on a tiny GPT, the HTML report, --text, bad input."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from core.errors import run_main
from core.model_config import ModelConfig
from training.checkpoint import load_run, save_checkpoint
from training.explain import figures as fig
from training.explain import introspect as ins
from training.explain.__main__ import main
from training.model import build_model
from training.tokenizer import build_tokenizer, encode

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nJULIET:\nAy me.\n"
CHROMIUM = "/usr/bin/chromium"


def make_run(path: Path, model: str = "gpt", seed: int = 0, **overrides) -> Path:
    """A run dir with random weights (bigger than init's std so attention is not uniform)."""
    path.mkdir(parents=True)
    tok = build_tokenizer("char", [TEXT])
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=2, n_head=2,
                      n_embd=32, dropout=0.0, model=model, **overrides)
    m = build_model(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    save_checkpoint(path / "ckpt.pt", {"model_config": cfg.to_dict(), "train_config": {},
                                       "model": m.state_dict(), "iter": 0, "best_val_loss": 0.0})
    rows = [{"iter": i * 10, "train_loss": 5.0 - i, "val_loss": 5.1 - i, "sample": f"sample at {i * 10}"}
            for i in range(4)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def random_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("explain") / "run")


@pytest.fixture(scope="module", params=["gpt", "qwen3"])
def loaded(request, random_run, tmp_path_factory):
    """The gpt run, and a qwen3 one with two query heads on one KV head."""
    run = random_run if request.param == "gpt" else \
        make_run(tmp_path_factory.mktemp("explain") / "qwen3", model="qwen3", n_kv_head=1)
    model, config, tok = load_run(run)
    return model, config, encode(tok, "ROMEO:\nBut soft")


@pytest.fixture(scope="module")
def report(random_run, tmp_path_factory) -> Path:
    bigram = make_run(tmp_path_factory.mktemp("explain") / "bigram", model="bigram")
    out = tmp_path_factory.mktemp("explain") / "report"
    assert main(["--run", str(random_run), "--prompt", "ROMEO:\nBut soft", "--out", str(out),
                 "--max-new-tokens", "5", "--bigram-run", str(bigram)]) == 0
    return out / "index.html"


def test_attention_rows_sum_to_one_and_are_causal(loaded):
    model, config, ids = loaded
    trace = ins.trace_forward(model, ids)
    assert len(trace.attn) == config.n_layer
    for a in trace.attn:
        assert a.shape == (config.n_head, len(ids), len(ids))
        torch.testing.assert_close(a.sum(-1), torch.ones(config.n_head, len(ids)))
        assert torch.all(a.triu(diagonal=1) == 0)
        assert a.tril(diagonal=-1).abs().sum() > 0


def test_traced_forward_is_the_models(loaded):
    """The recorded weights are the ones the forward used: the traced logits are the model's,
    and with grouped KV heads the trace says which KV head each query head reads."""
    model, config, ids = loaded
    trace = ins.trace_forward(model, ids)
    logits = model(torch.tensor([ids]))[0][0]
    torch.testing.assert_close(trace.logits, logits, atol=1e-5, rtol=1e-4)
    assert trace.kv_group == config.n_head // config.kv_heads
    assert len(trace.resid) == config.n_layer + 1


def test_last_layer_of_the_logit_lens_is_the_models_prediction(loaded):
    model, config, ids = loaded
    trace = ins.trace_forward(model, ids)
    lens = ins.logit_lens(model, trace)
    assert lens.top_ids.shape == (config.n_layer + 1, len(ids))
    assert torch.equal(lens.top_ids[-1], trace.logits.argmax(-1))
    torch.testing.assert_close(lens.top_probs[-1], torch.softmax(trace.logits, -1).max(-1).values)


def test_saliency_covers_the_prompt(loaded):
    model, _, ids = loaded
    s, target = ins.saliency(model, ids)
    assert s.shape == (len(ids),)
    assert s.abs().sum() > 0 and torch.all(s >= 0)
    assert target == int(model(torch.tensor([ids]))[0][0, -1].argmax())
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_step_by_step_follows_the_sampler(loaded):
    model, _, ids = loaded
    steps = ins.step_by_step(model, ids, 5, temperature=0.0)
    seq = list(ids)
    for s in steps:
        assert s.chosen == int(model(torch.tensor([seq]))[0][0, -1].argmax())
        assert len(s.attn_last[0][0]) == len(seq)
        seq.append(s.chosen)
    top_k = ins.step_by_step(model, ids, 4, temperature=1.0, top_k=3, seed=1)
    assert all(int((s.probs > 0).sum()) <= 3 and s.probs[s.chosen] > 0 for s in top_k)


def test_report_is_self_contained(report):
    html = report.read_text()
    srcs = re.findall(r'(?:src|href)="([^"#]*)"', html)
    assert srcs and all(s.startswith("data:") for s in srcs), [s[:40] for s in srcs]
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert html.count("data:image/png;base64,") >= 5 and "data:image/gif;base64," in html
    for title in ["Attention maps", "Step by step", "Logit lens", "Saliency", "Training story"]:
        assert title in html
    assert "bigram validation" not in html  # the legend is inside the PNG, not the text
    assert "sample at 0" in html and "sample at 30" in html
    assert "↵" in html  # the prompt's newline is shown visibly in token labels


def test_report_of_a_trained_run_tells_its_training_story(tiny_run, tmp_path):
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    out = tmp_path / "out"
    assert main(["--run", str(tiny_run), "--prompt", "Shall I", "--out", str(out),
                 "--max-new-tokens", "3"]) == 0
    html = (out / "index.html").read_text()
    assert f"iteration {rows[0]['iter']:,}" in html and f"iteration {rows[-1]['iter']:,}" in html
    assert "Shall" in html and html.count("data:image/png;base64,") >= 5


def test_bigram_run_is_explained_without_attention(tmp_path):
    run = make_run(tmp_path / "bigram", model="bigram")
    out = tmp_path / "out"
    assert main(["--run", str(run), "--prompt", "ROMEO:", "--out", str(out),
                 "--max-new-tokens", "3"]) == 0
    html = (out / "index.html").read_text()
    assert "no attention" in html and "data:image/png" in html


def test_text_prints_the_table(random_run, capsys):
    assert main(["--run", str(random_run), "--prompt", "ROMEO:", "--text",
                 "--max-new-tokens", "4", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["step", "context"] and len(lines) == 5
    assert all(line.split()[0] == str(n) for n, line in enumerate(lines[1:], 1))
    assert all(line.count("%") == 4 for line in lines[1:])  # picked p + 3 candidates


@pytest.mark.parametrize("args, message", [
    (["--run", "/nonexistent/run", "--prompt", "hi", "--text"], "does not exist"),
    (["--prompt", "", "--text"], "--prompt is empty"),
    (["--prompt", "hi"], "--out DIR is required"),
    (["--prompt", "hi", "--text", "--temperature", "-1"], "--temperature"),
    (["--prompt", "hi", "--text", "--bigram-run", "/nonexistent/bigram"], "--bigram-run"),
])
def test_bad_input_exits_2_with_one_line(random_run, args, message, capsys):
    if "--run" not in args:
        args = ["--run", str(random_run)] + args
    with pytest.raises(SystemExit) as exit_:
        run_main(main, args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_command_line_runs_as_a_module(random_run):
    proc = subprocess.run([sys.executable, "-m", "training.explain", "--run", str(random_run),
                           "--prompt", ""], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --prompt is empty")
    assert proc.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
def test_screenshot_shows_the_heatmaps(report, tmp_path):
    """Headless Chromium renders the page: the top of it holds colourful heatmaps, not blank."""
    from PIL import Image
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1280,1600", report.as_uri()],
                   capture_output=True, timeout=90, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1600)
    # Heatmaps are drawn in viridis: count pixels near that colour map (the page itself has
    # none, so a page whose images failed to load scores 0 here; a real one scores ~10%).
    lut = matplotlib.colormaps[fig.HEAT](np.linspace(0, 1, 64))[:, :3] * 255
    px = np.asarray(image, dtype=np.float32).reshape(-1, 3)
    near = np.zeros(len(px), dtype=bool)
    for c in lut:  # one colour at a time: a (pixels, 64, 3) array would take gigabytes
        near |= ((px - c) ** 2).sum(-1) < 15 ** 2
    assert near.mean() > 0.03, f"only {near.mean():.1%} of the page is heatmap-coloured"
    assert len(np.unique(px[near], axis=0)) > 100, "the heatmaps have too few distinct colours"


def test_qwen3_report_names_the_kv_head_each_query_head_reads(tmp_path):
    run = make_run(tmp_path / "qwen3", model="qwen3", n_kv_head=1)
    out = tmp_path / "report"
    assert main(["--run", str(run), "--prompt", "ROMEO:\nBut", "--out", str(out), "--max-new-tokens", "2"]) == 0
    html = (out / "index.html").read_text()
    assert "grouped-query" in html and "2 (1 KV)" in html and "qwen3" in html
