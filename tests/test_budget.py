"""--time-budget: a run ends within its budget, the lr decays by time, and --resume keeps the
run's budget; --init-from: a fine-tune starts from a base run's weights and tokenizer."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_TRAIN_ARGS

from core.errors import run_main
from training import train as train_mod
from training.checkpoint import load_checkpoint
from training.run_files import read_metrics

REPO = Path(__file__).resolve().parent.parent
# The interpreter's exit after summary.json (torch's teardown), and a loaded 2-core machine.
EXIT_TOLERANCE_S = 1.5


def oversubscribed() -> bool:
    """More than two runnable processes per core (a shared machine running several test suites):
    a step or a start-up can then take several times what the run measured a moment before, and
    no schedule can promise an end time. CI runs alone, where the bounds are checked."""
    return os.getloadavg()[0] > 2 * (os.cpu_count() or 1)
BUDGET_ARGS = TINY_TRAIN_ARGS + ["--max-iters", "1000000", "--eval-interval", "25", "--patience", "0"]


def train_process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "training.train", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_a_budgeted_run_ends_within_it_and_decays_the_lr_by_time(tmp_path):
    out, budget = tmp_path / "run", 10.0
    started = time.perf_counter()
    proc = train_process(BUDGET_ARGS + ["--time-budget", str(budget), "--min-lr", "3e-4", "--out", str(out)])
    _, err = proc.communicate(timeout=120)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, err
    s = summary(out)
    assert s["stopped_by"] == "budget" and s["time_budget_s"] == budget
    if not oversubscribed():
        assert s["run_s"] <= budget and wall <= budget + EXIT_TOLERANCE_S, (s["run_s"], wall)
    rows = read_metrics(out)
    assert rows[-1]["iter"] == s["iters"] >= 1       # the final evaluation is the last step's
    assert f"of a {budget:g} s budget" in err
    # A loaded machine's start-up can leave only a few steps (--max-iters is not read); when the
    # training window had room, the cosine reached --min-lr as the budget ended.
    if s["iters"] > 50:
        assert rows[-1]["lr"] == pytest.approx(3e-4, rel=0.1)
        assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5


def test_a_killed_budgeted_run_resumes_with_what_its_budget_had_left(tmp_path):
    """The budget is the run's: the resumed process gets what was left at the last checkpoint
    (the time between it and the kill is lost, its own start-up is paid again)."""
    out, budget = tmp_path / "run", 14.0
    proc = train_process(BUDGET_ARGS + ["--time-budget", str(budget), "--out", str(out)])
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(read_metrics(out)) < 2:
        time.sleep(0.05)
    time.sleep(0.1)                                   # last.pt follows its metrics row
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    ckpt = load_checkpoint(out / "last.pt")
    used, killed_at = ckpt["budget_used_s"], ckpt["iter"]
    assert 0 < used < budget and ckpt["budget_start_s"] > 0 and killed_at >= 25

    started = time.perf_counter()
    resumed = train_process(BUDGET_ARGS + ["--out", str(out), "--resume"])   # the budget comes from the checkpoint
    _, err = resumed.communicate(timeout=120)
    wall = time.perf_counter() - started
    assert resumed.returncode == 0, err
    s = summary(out)
    assert s["stopped_by"] == "budget" and s["iters"] >= killed_at
    assert s["run_s"] == pytest.approx(used + wall, abs=EXIT_TOLERANCE_S)   # the run's clock went on from the checkpoint
    if not oversubscribed():
        assert s["run_s"] <= budget and wall <= budget - used + EXIT_TOLERANCE_S, (wall, used)
    iters = [r["iter"] for r in read_metrics(out)]
    assert iters == sorted(set(iters))                # the resumed rows follow the killed run's


def test_resume_with_a_new_budget_gives_the_run_that_much_in_all(tiny_run, tmp_path, capsys):
    """A run trained for steps, resumed with a budget: its earlier time counts against it."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_run.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    used = load_checkpoint(copy / "last.pt")["budget_used_s"]
    assert used > 0
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_mod.main, BUDGET_ARGS + ["--out", str(copy), "--resume", "--time-budget", str(used + 6)])
    assert exit_info.value.code == 0
    s = summary(copy)
    assert s["stopped_by"] == "budget" and s["iters"] >= 60
    if not oversubscribed():
        assert s["run_s"] <= used + 6


def new_text(chars: int = 8000, seed: int = 0) -> str:
    """Prose the base never saw (and some characters outside its vocabulary)."""
    rng = random.Random(seed)
    words = ("the creature watched a cold glacier beneath grey mountains while Victor wept and "
             "wandered through Geneva, Ingolstadt, and the frozen sea; é ñ").split()
    lines = []
    while sum(map(len, lines)) < chars:
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + ".")
    return "\n".join(lines) + "\n"


def test_init_from_fine_tunes_a_run_on_new_text(tiny_run, tmp_path):
    corpus = tmp_path / "new.txt"
    corpus.write_text(new_text(), encoding="utf-8")
    out = tmp_path / "fine"
    args = TINY_TRAIN_ARGS + ["--corpus", str(corpus), "--init-from", str(tiny_run), "--max-iters", "20",
                              "--eval-interval", "10", "--out", str(out)]
    assert train_mod.main(args) == 0
    assert (out / "tokenizer.json").read_text() == (tiny_run / "tokenizer.json").read_text()
    s = summary(out)
    base = load_checkpoint(tiny_run / "ckpt.pt")
    assert s["init_from"]["run"] == str(tiny_run.resolve()) and s["init_from"]["iters"] == base["iter"]
    assert s["init_from"]["corpus"] == base["train_config"]["corpus"]
    assert s["model_config"] == {**base["model_config"]}
    rows = read_metrics(out)
    # The base's weights, not fresh ones: an untrained model's loss is ~ln(vocab) at step 0.
    assert rows[0]["val_loss"] < math.log(base["model_config"]["vocab_size"]) - 1.0
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert load_checkpoint(out / "last.pt")["init_from"] == s["init_from"]   # kept for --resume


@pytest.mark.parametrize("extra, message", [
    (["--n-layer", "3"], "cannot take --n-layer 3 (the base has 2)"),
    (["--tokenizer", "bpe"], "cannot take --tokenizer bpe (the base has char)"),
    (["--model", "bigram"], "cannot take --model bigram"),
])
def test_init_from_refuses_what_cannot_carry_over(tiny_run, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_mod.main, TINY_TRAIN_ARGS + ["--init-from", str(tiny_run), "--out", str(tmp_path / "r")] + extra)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], err


def test_init_from_a_dir_that_is_not_a_run(tmp_path, capsys):
    for base, message in ((tmp_path / "none", "no such run dir"), (tmp_path, "no checkpoint at")):
        with pytest.raises(SystemExit) as exit_info:
            run_main(train_mod.main, TINY_TRAIN_ARGS + ["--init-from", str(base), "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
