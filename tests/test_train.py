"""The trainer: run dir contents, resume after a kill, bad input, NaN stop, DDP."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY_TRAIN_ARGS

from core.errors import run_main
from training import train as train_mod
from training.checkpoint import load_checkpoint, load_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(argv, capsys):
    """Run the trainer's CLI in-process; return (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_mod.main, argv)
    return exit_info.value.code, capsys.readouterr().err


def test_run_dir_has_every_file(tiny_run):
    for name in ("ckpt.pt", "last.pt", "tokenizer.json", "metrics.jsonl", "summary.json", "loss.png"):
        assert (tiny_run / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [0, 20, 40, 60]
    assert set(rows[0]) >= {"iter", "train_loss", "val_loss", "val_bpc", "elapsed_s", "tokens_per_s"}
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5, "the model did not learn"
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["best_val_loss"] == min(r["val_loss"] for r in rows)
    assert set(summary) >= {"params", "best_val_loss", "best_val_bpc", "iters", "wall_s", "tokens_per_s", "device"}
    ckpt = load_checkpoint(tiny_run / "ckpt.pt")
    assert ckpt["iter"] == min(rows, key=lambda r: r["val_loss"])["iter"]
    assert ckpt["model_config"]["n_layer"] == 2


def test_load_run_rebuilds_the_model(tiny_run):
    model, config, tok = load_run(tiny_run)
    assert not model.training and config.block_size == 32
    assert tok.get_vocab_size() == config.vocab_size


@pytest.mark.parametrize("parallel", [["--dropout", "0.1"], ["--dropout", "0.0", "--threads", "2"]],
                         ids=["torch-threads-dropout", "worker-threads"])
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, parallel):
    """SIGKILL mid-run, then --resume: the losses equal a run that was never stopped, with
    torch's threads (dropout's random state restored) and with the batch split across worker
    threads (training/workers.py: the same sums whatever the scheduling)."""
    args = TINY_TRAIN_ARGS + ["--max-iters", "60", "--eval-interval", "10", *parallel]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "training.train", *args, "--out", str(killed)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = killed / "metrics.jsonl"
        if (killed / "last.pt").exists() and metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    killed_at = load_checkpoint(killed / "last.pt")["iter"]
    assert 10 <= killed_at < 60  # rows are written before last.pt

    assert train_mod.main(args + ["--out", str(killed), "--resume"]) == 0
    assert train_mod.main(args + ["--out", str(straight)]) == 0
    read = lambda d: [(r["iter"], r["train_loss"], r["val_loss"])
                      for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert read(killed) == read(straight)
    assert read(killed)[-1][0] == 60


@pytest.mark.parametrize("extra, message", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--corpus", "no-such-corpus"], "unknown corpus"),
    (["--n-embd", "30", "--n-head", "4"], "divisible by n_head"),
    (["--block-size", "4096"], "corpus too small"),
    (["--tokenizer", "bpe", "--vocab-size", "10"], "vocab-size"),
    (["--threads", "1", "--device", "cuda"], "no CUDA GPU"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, message):
    code, err = run_cli(TINY_TRAIN_ARGS + ["--out", str(tmp_path / "r")] + extra, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    code, err = run_cli(["--corpus", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "is empty" in err


def test_unwritable_out_dir(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, err = run_cli(TINY_TRAIN_ARGS + ["--out", str(tmp_path / "file" / "run")], capsys)
    assert code == 2 and "cannot write to output dir" in err


def test_resume_errors(tiny_run, tmp_path, capsys):
    code, err = run_cli(TINY_TRAIN_ARGS + ["--out", str(tmp_path / "none"), "--resume"], capsys)
    assert code == 2 and "nothing to resume" in err
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_run.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    code, err = run_cli(TINY_TRAIN_ARGS + ["--out", str(copy), "--resume", "--n-layer", "3"], capsys)
    assert code == 2 and "different model shape" in err and "n_layer=2" in err
    code, err = run_cli(TINY_TRAIN_ARGS + ["--out", str(copy)], capsys)
    assert code == 2 and "already holds a run" in err
    (copy / "last.pt").write_bytes(b"torn write")
    code, err = run_cli(TINY_TRAIN_ARGS + ["--out", str(copy), "--resume"], capsys)
    assert code == 2 and "corrupt" in err


def test_cli_exit_status_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training.train", "--preset", "nope", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown preset 'nope'; choose one of cpu-small, gpu, cpu-5min, frankenstein"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 30 else loss
    monkeypatch.setattr("training.model.F.cross_entropy", poisoned)
    out = tmp_path / "nan"
    code, err = run_cli(TINY_TRAIN_ARGS + ["--out", str(out), "--eval-interval", "5"], capsys)
    assert code == 2 and "loss became nan" in err and "ckpt.pt" in err
    model, _, _ = load_run(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train", *TINY_TRAIN_ARGS, "--max-iters", "20", "--eval-interval", "10",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iters"] == 20
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3  # iters 0, 10, 20: written once, by rank 0 only
    assert "cpu x2" in proc.stderr
    load_run(out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA; this machine has none")
def test_cuda_bf16_compile_under_torchrun_then_export_on_cpu(tmp_path):
    """The GPU path end to end: torchrun (NPROC=1), bf16 autocast, TF32, fused AdamW + Muon,
    torch.compile; then the CUDA-trained checkpoint exports where CUDA is hidden."""
    out, art = tmp_path / "cuda", tmp_path / "art"
    args = [a for a in TINY_TRAIN_ARGS if a not in ("--device", "cpu")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "training.train", *args, "--device", "cuda", "--precision", "bf16", "--compile",
           "--optimizer", "muon", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["precision"] == "bf16 autocast"
    cpu_only = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for cmd in (["-m", "export", "--run", str(out), "--out", str(art)],
                ["-m", "export.verify", str(art), "--run", str(out)]):
        proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True, env=cpu_only)
        assert proc.returncode == 0, proc.stderr[-3000:]
