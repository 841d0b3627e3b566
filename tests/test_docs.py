"""The README and docs/ name only what exists: make targets and variables, `python -m`
modules, their flags, relative links and their #anchors (tests/docs_drift.py reads them).

A failure names the page and line, what it names and what is missing, e.g.
    docs/serving.md:17: `--max-batch`: no command the docs name takes --max-batch
Fix the page (or the code) in the same commit.
"""
from __future__ import annotations

import argparse

import pytest

from tests.docs_drift import ROOT, Checker, doc_files, github_slugs


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
"""


def test_each_kind_of_drift_is_named_with_its_line():
    problems = Checker().check_text("docs/bad.md", BAD)
    assert sorted(problems) == sorted([
        "docs/bad.md:7: `python -m serving --model artifacts/default --max-queue 8 --http-portt 1 # continued`:"
        " python -m serving has no flag --http-portt",
        "docs/bad.md:9: `python -m no_such_module --x`: no module no_such_module",
        "docs/bad.md:10: `.venv/bin/python bench/no_such.py`: no file bench/no_such.py",
        "docs/bad.md:11: `torchrun --standalone --nproc_per_node=2 -m training.train --presett gpu`:"
        " python -m training.train has no flag --presett",
        "docs/bad.md:3: `make trian`: the Makefile has no target trian",
        "docs/bad.md:3: `make train PRESETT=gpu`: the Makefile has no variable PRESETT",
        "docs/bad.md:3: `python -m serving --max-batchz 4`: python -m serving has no flag --max-batchz",
        "docs/bad.md:4: `--no-such-flag`: no command the docs name takes --no-such-flag",
        "docs/bad.md:15: link (nothing.md): no file docs/nothing.md",
        "docs/bad.md:15: link (#nope): docs/bad.md has no heading #nope",
        "docs/bad.md:16: link (serving.md#no-such-heading): docs/serving.md has no heading #no-such-heading",
    ])


@pytest.mark.parametrize("heading, slug", [
    ("## HTTP API (OpenAI-compatible)", "http-api-openai-compatible"),
    ("### 2. Train, then serve", "2-train-then-serve"),
    ("## `make image-test`: how the images are proven", "make-image-test-how-the-images-are-proven"),
])
def test_anchors_are_githubs(heading, slug):
    assert slug in github_slugs(heading + "\n")
