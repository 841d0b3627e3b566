"""Markdown as the drift test reads it: prose and fenced code, inline code spans, the shell
commands a line holds, links, and the #anchors GitHub gives headings.

    for start, lines in prose_runs(text): ...        # runs of prose between fenced code blocks
    for line, span in code_spans(text): ...          # inline `code`, with its line number
    split_commands("A=1 make x && python -m y --z")   # [["A=1", "make", "x"], ["python", "-m", "y", "--z"]]
    github_slugs(text)                           # {"http-api-openai-compatible", ...}

Only reading: what each thing names is checked by tests/docs_drift.py.
"""
from __future__ import annotations

import re
import shlex

LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SPAN = re.compile(r"(`+)(.+?)\1", re.S)
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")


def github_slugs(text: str) -> set[str]:
    """The #anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces
    to hyphens, repeats numbered)."""
    slugs, counts = set(), {}
    for _, lines in prose_runs(text):
        for line in lines:
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
            base = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
            n = counts.get(base, 0)
            counts[base] = n + 1
            slugs.add(base if n == 0 else f"{base}-{n}")
    return slugs


def blocks(text: str):
    """(kind, first line number, lines): 'prose' runs and fenced 'code:<lang>' blocks."""
    kind, start, buf, fence = "prose", 1, [], None
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            yield kind, start, buf
            kind, start, buf, fence = f"code:{m.group(2).lower()}", i + 1, [], m.group(1)
        elif fence is not None and line.strip().startswith(fence[:3]) and not line.strip()[len(fence):].strip():
            yield kind, start, buf
            kind, start, buf, fence = "prose", i + 1, [], None
        else:
            buf.append(line)
    yield kind, start, buf


def prose_runs(text: str):
    """(first line number, lines) of each run of prose between fenced code blocks."""
    return ((start, lines) for kind, start, lines in blocks(text) if kind == "prose")


def code_spans(text: str):
    """(line number, text) of every inline code span in prose (a span may wrap a line)."""
    for start, lines in prose_runs(text):
        body = "\n".join(lines)
        for m in SPAN.finditer(body):
            yield start + body.count("\n", 0, m.start()), m.group(2)


def split_commands(line: str) -> list[list[str]]:
    """A shell line's simple commands, as token lists (comments and quotes as bash reads them)."""
    lex = shlex.shlex(line.replace("$'", "'"), posix=True, punctuation_chars=";&|")
    lex.whitespace_split, lex.commenters = True, "#"
    try:
        tokens = list(lex)
    except ValueError:        # an unbalanced quote: a JSON body spread over lines
        tokens = line.split("#")[0].split()
    cmds, cur = [], []
    for t in tokens:
        if t and set(t) <= set(";&|"):
            cmds.append(cur)
            cur = []
        else:
            cur.append(t)
    return [c for c in cmds + [cur] if c]


def scripts_named(text: str) -> set[str]:
    """Modules a page names by path in inline code (`bench/load.py`)."""
    return {m.group(2)[:-3].replace("/", ".") for m in SPAN.finditer(text)
            if re.fullmatch(r"(bench|serving|export|training|k8s|tests)/[\w/]+\.py", m.group(2))}


def shorten(s: str, n: int = 90) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."
