"""The README and docs/ name only what exists: make targets and variables, `python -m`
modules, their flags, relative links and their #anchors, repository paths, SHELLEY_*
variables (tests/docs_drift.py reads them); every benchmark table says where it came from.

A failure names the page and line, what it names and what is missing, e.g.
    docs/serving.md:17: `--max-batch`: no command the docs name takes --max-batch
Fix the page (or the code) in the same commit.
"""
from __future__ import annotations

import argparse
import re
import subprocess

import pytest

from tests.docs_drift import ROOT, Checker, doc_files
from tests.docs_markdown import prose_runs, github_slugs

BENCHMARKS = ROOT / "docs" / "benchmarks.md"
PROVENANCE = re.compile(r"^Provenance: script `(?P<script>[^`]+)` · command `(?P<command>[^`]+)` · "
                        r"date (?P<date>\d{4}-\d\d-\d\d) · machine (?P<machine>[^`·]+?) · "
                        r"commit `(?P<commit>[0-9a-f]{7,40})`$")


def test_the_docs_name_only_what_exists():
    problems = Checker().check_files(doc_files())
    assert not problems, "the docs name things that do not exist:\n" + "\n".join(problems)


def test_a_flag_renamed_in_the_code_fails_on_every_line_that_names_it(monkeypatch):
    # Rename --max-batch as the code would, then read the real serving page.
    add = argparse.ArgumentParser.add_argument

    def renamed(self, *names, **kw):
        return add(self, *["--batch-rows" if n == "--max-batch" else n for n in names], **kw)

    monkeypatch.setattr(argparse.ArgumentParser, "add_argument", renamed)
    page = ROOT / "docs" / "serving.md"
    lines = [n for n, line in enumerate(page.read_text().splitlines(), 1) if "`--max-batch`" in line]
    assert lines, "docs/serving.md no longer names --max-batch: pick another flag for this test"
    problems = Checker().check_files([page])
    for n in lines:
        assert any(p.startswith(f"docs/serving.md:{n}: ") and p.endswith("takes --max-batch")
                   for p in problems), problems


BAD = """\
# A page

Run `make trian` or `make train PRESETT=gpu`, then `python -m serving --max-batchz 4`.
The table's flag `--no-such-flag` is no one's.

```bash
python -m serving --model artifacts/default \\
    --max-queue 8 --http-portt 1      # continued
python -m no_such_module --x
.venv/bin/python bench/no_such.py
torchrun --standalone --nproc_per_node=2 -m training.train --presett gpu
curl --whatever localhost:8000        # not ours: not checked
```

See [training](training.md), [nothing](nothing.md), [a heading](#a-page), [no heading](#nope)
and [another page's](serving.md#no-such-heading). `[in code](nowhere.md)` is not a link.
The engine is serving/engine/core.py, once serving/engine.py; SHELLEY_MAX_BATCH, not SHELLEY_MAX_ROWS.
"""


def test_each_kind_of_drift_is_named_with_its_line():
    problems = Checker().check_text("docs/bad.md", BAD)
    assert sorted(problems) == sorted([
        "docs/bad.md:7: `python -m serving --model artifacts/default --max-queue 8 --http-portt 1 # continued`:"
        " python -m serving has no flag --http-portt",
        "docs/bad.md:9: `python -m no_such_module --x`: no module no_such_module",
        "docs/bad.md:10: `.venv/bin/python bench/no_such.py`: no file bench/no_such.py",
        "docs/bad.md:10: names bench/no_such.py, which does not exist",
        "docs/bad.md:11: `torchrun --standalone --nproc_per_node=2 -m training.train --presett gpu`:"
        " python -m training.train has no flag --presett",
        "docs/bad.md:3: `make trian`: the Makefile has no target trian",
        "docs/bad.md:3: `make train PRESETT=gpu`: the Makefile has no variable PRESETT",
        "docs/bad.md:3: `python -m serving --max-batchz 4`: python -m serving has no flag --max-batchz",
        "docs/bad.md:4: `--no-such-flag`: no command the docs name takes --no-such-flag",
        "docs/bad.md:15: link (nothing.md): no file docs/nothing.md",
        "docs/bad.md:15: link (#nope): docs/bad.md has no heading #nope",
        "docs/bad.md:16: link (serving.md#no-such-heading): docs/serving.md has no heading #no-such-heading",
        "docs/bad.md:17: names serving/engine.py, which does not exist",
        "docs/bad.md:17: names SHELLEY_MAX_ROWS, which nothing reads",
    ])


@pytest.mark.parametrize("heading, slug", [
    ("## HTTP API (OpenAI-compatible)", "http-api-openai-compatible"),
    ("### 2. Train, then serve", "2-train-then-serve"),
    ("## `make image-test`: how the images are proven", "make-image-test-how-the-images-are-proven"),
])
def test_anchors_are_githubs(heading, slug):
    assert slug in github_slugs(heading + "\n")


def provenance_problems(name: str, text: str) -> tuple[list[str], set[str]]:
    """Every table under a heading of a benchmarks page needs a `Provenance:` line before it in
    its section (a `###` inherits its `##`'s), whose script exists and whose command runs that
    script (the drift test checks the command's flags); tables above the first `##` (the
    index) are exempt.
    Returns the problems and the commits named."""
    problems, commits = [], set()
    for start, lines in prose_runs(text):
        prov, section = None, None
        for n, line in enumerate(lines, start):
            if re.match(r"^#{2,6} ", line):   # a ### keeps its ##'s provenance unless it has its own
                prov, section = (None if line.startswith("## ") else prov), line
            elif line.startswith("Provenance:"):
                prov = PROVENANCE.match(line)
                if not prov:
                    problems.append(f"{name}:{n}: a provenance line reads `Provenance: script `bench/x.py` · "
                                    "command `python -m bench.x ...` · date YYYY-MM-DD · machine ... · commit `abc1234``")
                    continue
                script, command = prov["script"], prov["command"]
                commits.add(prov["commit"])
                if not (ROOT / script).is_file():
                    problems.append(f"{name}:{n}: no script {script}")
                module = script.removesuffix(".py").replace("/", ".")
                if f"-m {module}" not in command and script not in command:
                    problems.append(f"{name}:{n}: the command `{command}` does not run {script}")
            elif section and line.startswith("|") and n - start + 1 < len(lines) and \
                    re.match(r"^\|[\s:|-]+\|\s*$", lines[n - start + 1]) and prov is None:
                problems.append(f"{name}:{n}: a table under `{section}` without a provenance line above it")
    return problems, commits


def test_every_benchmark_table_says_where_it_came_from():
    problems, commits = provenance_problems("docs/benchmarks.md", BENCHMARKS.read_text())
    assert not problems, "\n".join(problems)
    assert commits
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the commits cannot be looked up")
    if (ROOT / ".git" / "shallow").exists():
        pytest.skip("a shallow clone: the history the commits are in is not here")
    # On main's history, not merely in the object store: a commit of a branch that was later
    # rebased exists in the clone it was made in and nowhere else (a fresh clone lacks it).
    off_main = [c for c in commits if subprocess.run(["git", "merge-base", "--is-ancestor", c, "HEAD"], cwd=ROOT,
                                                     capture_output=True).returncode != 0]
    assert not off_main, f"docs/benchmarks.md names commits that are not in this branch's history: {off_main}"


def test_a_benchmark_table_without_provenance_fails():
    page = """# Benchmarks

| index | exempt |
| --- | --- |

## Speed

| a | b |
| --- | ---: |
| x | 1.0× |

## Fine

Provenance: script `bench/load.py` · command `python -m bench.load --streams 1` · date 2026-12-07 · machine 2 cores · commit `ec76f3e`

| a | b |
| --- | ---: |

## Wrong script

Provenance: script `bench/gone.py` · command `python -m bench.load` · date 2026-12-07 · machine 2 cores · commit `ec76f3e`
"""
    assert provenance_problems("b.md", page)[0] == [
        "b.md:8: a table under `## Speed` without a provenance line above it",
        "b.md:21: no script bench/gone.py",
        "b.md:21: the command `python -m bench.load` does not run bench/gone.py",
    ]


def test_a_marked_flag_list_names_every_flag_and_only_those():
    page = """# The health check

<!-- flags: python -m serving.healthcheck -->
| flag | what |
| --- | --- |
| `--target` | where (not `--service`: a later column is prose) |
| `--timeout` | seconds |
| `--retries` | gone |
"""
    assert [p for p in Checker().check_text("docs/h.md", page) if "list" in p] == [
        "docs/h.md:3: the list of python -m serving.healthcheck's flags below misses --service",
        "docs/h.md:3: the list of python -m serving.healthcheck's flags below names --retries, which it does not take",
    ]


def test_the_front_page_lists_every_make_target():
    checker = Checker()
    checker.helped.add("brand-new")      # a target added to the Makefile with a `## ` help line
    problems = checker.check_files([ROOT / "README.md"])
    assert [p for p in problems if "make brand-new" in p] == [
        next(f"README.md:{n}: the table of make targets below misses make brand-new"
             for n, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1)
             if line == "<!-- targets: make -->")]
