"""Command-line plumbing shared by the entry points: one-line errors, exit status 2.

A user mistake (bad flag, missing file, corrupt checkpoint) is a `UserError`; `run_main`
prints it as one line, without a traceback, and exits 2. Both, with `atomic_write` and
`sha256_file`, are defined once in serving/ (torch-free, so the serving image has them too)
and re-exported here for the training and export commands.
"""
from __future__ import annotations

import os
from pathlib import Path

from serving.artifact import atomic_write, sha256_file  # noqa: F401  (re-exported)
from serving.errors import UserError, run_main  # noqa: F401  (re-exported)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to output dir {path}: {e.strerror}; choose another --out") from None
    return path
