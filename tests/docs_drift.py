"""What the README and docs/ name, checked against the code: the drift test's engine.

    problems = Checker().check_files(doc_files())           # [] when the docs are true
    problems = Checker().check_text("x.md", "make trian\n")   # ["x.md:1: `make trian`: the Makefile has no target trian"]

Long pages drift: a flag is renamed, a target dropped, a page moved, and the sentence that
named it stays. This reads every Markdown page the way a reader would use it: the commands
in fenced code blocks and in inline code (`make T VAR=...`, `python -m M --flag`,
`python bench/x.py --flag`, `torchrun ... -m M --flag`), the bare `--flag`s of prose and flag
tables, the relative links (with their #anchors), the repository paths and the `SHELLEY_*`
variables prose names; a list marked `<!-- flags: python -m M -->` names all of M's flags, a table marked
`<!-- targets: make -->` every target `make help` lists. Each is checked against the thing
itself: the Makefile's targets and variables, an importable module, and the argparse parser
that module's `main(argv)` builds (captured as it is about to parse, so nothing runs and
no subprocess starts). A problem names the page, the line and the missing thing.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
from contextlib import contextmanager
from pathlib import Path

from tests.docs_markdown import LINK, blocks, code_spans, github_slugs, prose_runs, scripts_named, shorten, split_commands

ROOT = Path(__file__).resolve().parents[1]

# Flags of other programs that prose names alone, outside a command line of theirs.
EXTERNAL_FLAGS = {
    "--jinja": "llama.cpp's llama-server",
    "--nproc_per_node": "torchrun", "--standalone": "torchrun",
    "--no-sandbox": "chromium", "--disable-gpu": "chromium", "--disable-background-networking": "chromium",
}
PYTHONS = re.compile(r"^(python3?(\.\d+)?|\S*/python3?|\$\(PY\))$")
FLAG = re.compile(r"^[\[(]?(--[A-Za-z0-9][A-Za-z0-9_-]*)")
BARE_FLAG = re.compile(r"(?<![\w-])(--[A-Za-z0-9][A-Za-z0-9_-]*)")
SHELLS = {"", "bash", "sh", "shell", "console", "make"}
# A path into this repository, as prose names one ("serving/engine/core.py", "k8s/base/").
REPO_PATH = re.compile(r"(?<![\w/.$-])((?:core|training|export|serving|bench|tests|k8s|proto|docs)/[\w/.-]*[\w/])")


def doc_files() -> list[Path]:
    """The pages checked: the front page, every page under docs/, and bench/README.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


class _Captured(BaseException):
    """Raised in place of parsing: the parser a main(argv) built, before it runs anything."""


@contextmanager
def _capture_parsers(seen: list):
    """parse_known_args records its parser; a dispatcher's pre-parser (add_help=False, as
    export's `--format`) parses for real so the command goes on to its real parser, whose
    parse raises _Captured."""
    orig = argparse.ArgumentParser.parse_known_args

    def fake(self, args=None, namespace=None):
        seen.append(self)
        if not self.add_help:
            return orig(self, args, namespace)
        raise _Captured

    argparse.ArgumentParser.parse_known_args = fake
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = orig


def _options(parser: argparse.ArgumentParser) -> set[str]:
    out = set()
    for a in parser._actions:
        out.update(a.option_strings)
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                out |= _options(sub)
    return out


class Checker:
    """One pass over some pages; parsers and the Makefile are read once per Checker."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        self._parsers: dict[tuple, set[str] | str] = {}
        make = (root / "Makefile").read_text()
        self.targets = set(re.findall(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", make, re.M))
        self.helped = set(re.findall(r"^([a-z0-9-]+):.*## ", make, re.M))   # what `make help` lists
        self.make_vars = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*[?:+]?=", make, re.M))
        self.make_vars |= set(re.findall(r"\$\(([A-Z][A-Z0-9_]*)\)", make))
        self.make_modules = sorted(set(re.findall(r"-m\s+([a-z_][\w.]*)", make)))
        self.known_flags: set[str] = set()
        self._env: set[str] | None = None

    # -- what a module's command line takes --------------------------------------------
    def flags_of(self, module: str, argv: list[str]) -> set[str] | str:
        """The option strings `python -m module` accepts for this argv (a dispatcher such as
        export's --format picks the parser), or a string saying why there are none."""
        key = (module, tuple(argv))     # a dispatcher (export's --format) reads the argv
        if key in self._parsers:
            return self._parsers[key]
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            got = f"no module {module}"
        else:
            mod = importlib.import_module(module)
            if found.submodule_search_locations is not None:
                mod = importlib.import_module(module + ".__main__") if importlib.util.find_spec(
                    module + ".__main__") else mod
            got = self._run_main(module, mod, argv)
        if isinstance(got, set):
            self.known_flags |= got
        self._parsers[key] = got
        return got

    def _run_main(self, module: str, mod, argv: list[str]) -> set[str] | str:
        main = getattr(mod, "main", None) or getattr(mod, "build_parser", None)
        if main is None:
            return f"{module} has no main(argv) to read its flags from"
        seen: list[argparse.ArgumentParser] = []
        with _capture_parsers(seen):
            try:
                out = main(list(argv)) if main.__name__ == "main" else main()
            except _Captured:
                pass
            except SystemExit as e:
                return f"{module}'s command line refused the documented argv ({e})"
            else:
                if isinstance(out, argparse.ArgumentParser):
                    seen.append(out)
        if not seen:
            return f"{module}.main(argv) finished without parsing a command line"
        return set().union(*(_options(p) for p in seen))

    # -- one page --------------------------------------------------------------------------
    def check_files(self, paths: list[Path]) -> list[str]:
        pages = [(self._name(p), p.read_text(), p) for p in paths if p.is_file()]
        problems = []
        for name, text, path in pages:    # commands first: they fill known_flags
            problems += self._check_commands(name, text)
        for module in self.make_modules + sorted({m for _, text, _ in pages for m in scripts_named(text)}):
            if "argparse" in self._source(module):   # `make bench-load`; "`bench/load.py` takes --prefix"
                self.flags_of(module, [])
        for name, text, path in pages:
            problems += self._check_bare_flags(name, text) + self._check_links(name, text, path)
            problems += self._check_paths(name, text) + self._check_env(name, text) + self._check_lists(name, text)
        return problems

    def check_text(self, name: str, text: str, path: Path | None = None) -> list[str]:
        path = path or self.root / name
        return self._check_commands(name, text) + self._check_bare_flags(name, text) + \
            self._check_links(name, text, path) + self._check_paths(name, text) + self._check_env(name, text) + \
            self._check_lists(name, text)

    def _check_lists(self, name: str, text: str) -> list[str]:
        """A paragraph, or a table's first column, after `<!-- flags: python -m MODULE -->` lists
        that command's flags, all of them and only them (`--no-x` stands for `--x` and back)."""
        problems, lines = [], text.splitlines()
        for i, line in enumerate(lines):
            if line.strip() == "<!-- targets: make -->":    # a table naming every `make help` target
                end = next((j for j in range(i + 1, len(lines)) if not lines[j].strip()), len(lines))
                named = {t for j in range(i + 1, end) for t in re.findall(r"`make ([a-z0-9-]+)", lines[j])}
                problems += [f"{name}:{i + 1}: the table of make targets below misses make {t}"
                             for t in sorted(self.helped - named)]
            m = re.match(r"^<!-- flags: python -m ([\w.]+) -->$", line.strip())
            if not m:
                continue
            flags = self.flags_of(m.group(1), [])
            if isinstance(flags, str):
                problems.append(f"{name}:{i + 1}: {flags}")
                continue
            end = next((j for j in range(i + 1, len(lines)) if not lines[j].strip()), len(lines))
            cells = [lines[j].split("|")[1] if lines[j].startswith("|") else lines[j] for j in range(i + 1, end)]
            named = {f for cell in cells for f in BARE_FLAG.findall(cell)}   # a table: its first column
            base = {f.replace("--no-", "--", 1) for f in named}
            for f in sorted(flags - {"-h", "--help"}):
                if f.startswith("--") and f not in named and f.replace("--no-", "--", 1) not in base:
                    problems.append(f"{name}:{i + 1}: the list of python -m {m.group(1)}'s flags below "
                                    f"misses {f}")
            problems += [f"{name}:{i + 1}: the list of python -m {m.group(1)}'s flags below names {f}, "
                         f"which it does not take" for f in sorted(named - flags)]
        return problems

    def _check_env(self, name: str, text: str) -> list[str]:
        """`SHELLEY_*` variables: a server flag's (serving/config.py derives them) or one the
        code, manifests or images read by name."""
        if self._env is None:
            from serving.config import ServeConfig, env_name
            self._env = {env_name(f) for f in ServeConfig.__dataclass_fields__}
            for pattern in ("core/**/*.py", "training/**/*.py", "export/**/*.py", "serving/**/*.py",
                            "bench/*.py", "k8s/**/*.yaml", "Dockerfile.*", "Makefile"):
                for f in self.root.glob(pattern):
                    self._env |= set(re.findall(r"SHELLEY_[A-Z0-9_]+", f.read_text()))
        return [f"{name}:{n}: names {var}, which nothing reads"
                for n, line in enumerate(text.splitlines(), 1)
                for var in re.findall(r"SHELLEY_[A-Z0-9_]*[A-Z0-9]", line) if var not in self._env]

    def _check_paths(self, name: str, text: str) -> list[str]:
        """Files and folders of this repository named anywhere on the page (a module moved,
        a script renamed)."""
        problems = []
        for n, line in enumerate(text.splitlines(), 1):
            for path in REPO_PATH.findall(line):
                if not (self.root / path).exists():
                    problems.append(f"{name}:{n}: names {path}, which does not exist")
        return problems

    def _source(self, module: str) -> str:
        """The source of one of this project's modules (a package's __main__), else ""."""
        base = self.root / module.replace(".", "/")
        for f in (base.with_suffix(".py"), base / "__main__.py"):
            if f.is_file():
                return f.read_text()
        return ""

    def _name(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    def _commands(self, text: str):
        """(line number, the command's text, its tokens) for every command the page names."""
        for line, span in code_spans(text):
            span = " ".join(span.split())
            if re.match(r"^(make|torchrun|\S*python3?|\$\(PY\))\s", span):
                for cmd in split_commands(span):
                    yield line, span, cmd
        for kind, start, lines in blocks(text):
            if kind.removeprefix("code:") in SHELLS:
                i = 0
                while i < len(lines):
                    first, joined = i, lines[i]
                    while joined.endswith("\\") and i + 1 < len(lines):
                        i += 1
                        joined = joined[:-1] + " " + lines[i]
                    for cmd in split_commands(joined):
                        yield start + first, joined.strip(), cmd
                    i += 1

    def _check_commands(self, name: str, text: str) -> list[str]:
        problems = []
        for line, shown, cmd in self._commands(text):
            where = f"{name}:{line}: `{shorten(shown)}`"
            while cmd and re.match(r"^[A-Z_][A-Z0-9_]*=", cmd[0]):
                cmd = cmd[1:]
            if not cmd:
                continue
            prog, rest = cmd[0], cmd[1:]
            if prog == "make":
                for t in rest:
                    if t.startswith("-"):
                        continue
                    if "=" in t:
                        var = t.split("=")[0]
                        if var not in self.make_vars:
                            problems.append(f"{where}: the Makefile has no variable {var}")
                    elif t not in self.targets:
                        problems.append(f"{where}: the Makefile has no target {t}")
                continue
            if prog == "torchrun":
                if "-m" not in rest:
                    continue
                rest = rest[rest.index("-m"):]
            elif not PYTHONS.match(prog):
                continue
            if rest[:1] == ["-m"] and len(rest) > 1:
                module, argv = rest[1], rest[2:]
            elif rest and rest[0].endswith(".py"):
                script = rest[0]
                if not (self.root / script).is_file():
                    problems.append(f"{where}: no file {script}")
                    continue
                module, argv = script[:-3].replace("/", "."), rest[1:]
            else:
                continue
            flags = self.flags_of(module, argv)
            if isinstance(flags, str):
                problems.append(f"{where}: {flags}")
                continue
            for tok in argv:
                m = FLAG.match(tok)
                if m and m.group(1).split("=")[0] not in flags:
                    problems.append(f"{where}: python -m {module} has no flag {m.group(1)}")
        return problems

    def _check_bare_flags(self, name: str, text: str) -> list[str]:
        """`--flag` spans in prose and tables: some command the docs name must take it."""
        problems = []
        for line, span in code_spans(text):
            if span.lstrip().startswith("--"):
                problems += [f"{name}:{line}: `{shorten(span)}`: no command the docs name takes {f}"
                             for f in BARE_FLAG.findall(span) if f not in self.known_flags | set(EXTERNAL_FLAGS)]
        return problems

    def _check_links(self, name: str, text: str, path: Path) -> list[str]:
        problems = []
        for start, lines in prose_runs(text):
            for n, line in enumerate(lines, start):
                for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                    if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                        continue
                    file, _, anchor = target.partition("#")
                    dest = (path.parent / file).resolve() if file else path
                    if not file:
                        if anchor not in github_slugs(text):
                            problems.append(f"{name}:{n}: link ({target}): {name} has no heading #{anchor}")
                    elif not dest.exists():
                        problems.append(f"{name}:{n}: link ({target}): no file {self._name(dest)}")
                    elif anchor and dest.suffix == ".md" and anchor not in github_slugs(dest.read_text()):
                        problems.append(f"{name}:{n}: link ({target}): {self._name(dest)} has no "
                                        f"heading #{anchor}")
        return problems
