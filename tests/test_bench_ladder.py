"""bench/ladder.py: two rungs of the ladder (GPT-2's block and the full modern one) train as
budgeted processes on the tiny corpus, are scored, and the table and results file say so;
a missing second corpus is skipped with how to get it."""
from __future__ import annotations

import json
from pathlib import Path

from bench import ladder

SONNETS = Path(__file__).resolve().parent / "data" / "sonnets.txt"


def test_two_rungs_print_a_table(tmp_path, capsys):
    results = tmp_path / "ladder.jsonl"
    assert ladder.main(["--corpus", str(SONNETS), str(tmp_path / "kjv.txt"), "--seconds", "5",
                        "--rungs", "0", "6", "--val-tokens", "500", "--results", str(results),
                        "--extra", "--n-layer 1 --n-embd 32 --n-head 2 --tokenizer char --eval-iters 1",
                        "--out", str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    assert "skipping" in err and "bible gen1:1-rev22:21" in err
    assert out.startswith("command: python -m bench.ladder") and "commit:" in out and "machine:" in out
    assert "| GPT-2 |" in out and "| +untied head |" in out
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["rung"] for r in rows] == [0, 6] and all(0 < r["val_bpc"] < 9 for r in rows)
    assert all(r["run_s"] <= 5 + 1.0 or r["iters"] == 0 for r in rows)   # a loaded machine may give no step
