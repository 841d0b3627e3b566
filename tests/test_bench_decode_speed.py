"""bench/decode_speed.py: a short run on the tiny model prints both tables, every engine
runs, and the fp32 engines agree on the greedy tokens (so they run the same weights).
Engines whose packages (the bench extra) are absent are left out."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_bench():
    spec = importlib.util.spec_from_file_location("decode_speed", ROOT / "bench" / "decode_speed.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def test_bench_prints_tables(tiny_run, capsys):
    bench = load_bench()
    engines = ["a", "a8"] + ["d"] * installed("transformers")
    engines += ["e", "e8"] * (installed("transformers") and installed("ctranslate2"))
    assert bench.main(["--run", str(tiny_run), "--engines", *engines, "--batches", "1", "3",
                       "--new-tokens", "4", "--repeats", "1", "--pasts", "4", "12", "--steps", "10",
                       "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| 1 |") or line.startswith("| 3 |")]
    speed = {(r[0], r[1].split()[0]): r for r in rows if len(r) == 6}
    assert set(speed) == {(b, f"({k})") for b in ("1", "3") for k in engines}
    for (_, engine), r in speed.items():
        assert float(r[2].replace(",", "")) > 0
        if engine in ("(d)", "(e)"):                 # same weights, fp32: the same greedy tokens
            assert r[5].startswith("(a)") and int(r[5].split()[1].rstrip("%")) >= 75, r
    steps = [line.split("|")[1].strip() for line in out.splitlines() if line.count("|") == 8]
    assert steps[-2:] == ["4", "12"]
    assert "**1 thread** |" in out and "load " in out
