"""Tokenizers: characters or byte-level BPE, saved as one Hugging Face `tokenizer.json`.

    tok = build_tokenizer("char", text)          # or ("bpe", text, vocab_size=2000)
    ids = encode_documents(tok, docs)             # one id stream, documents split by EOS
    tok.save("tokenizer.json"); Tokenizer.from_file("tokenizer.json")   # no torch needed

Both are lossless for any Unicode string. The char tokenizer has one id per character of
the corpus plus the 256 byte tokens `<0x00>`..`<0xFF>`: a character it never saw is
spelled as its UTF-8 bytes (byte fallback), and the decoder glues them back together.
BPE works on bytes from the start (GPT-2's scheme). The server loads the same file.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
TOKENIZER_KINDS = ("char", "bpe")


def build_char_tokenizer(text: str) -> Tokenizer:
    vocab: dict[str, int] = {}
    for ch in sorted(set(text)):
        vocab[ch] = len(vocab)
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    # A BPE model with no merges is a character lookup that supports byte fallback.
    # No pre-tokenizer or normalizer: every character, whitespace included, is kept.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([EOS])
    return tok


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    if vocab_size < 257 + 1:
        raise ValueError(f"--vocab-size must be at least 258 for bpe (256 bytes + EOS + one merge), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def build_tokenizer(kind: str, texts: Sequence[str], vocab_size: int = 2000) -> Tokenizer:
    if kind == "char":
        return build_char_tokenizer("".join(texts))
    if kind == "bpe":
        return build_bpe_tokenizer(texts, vocab_size)
    raise ValueError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")


def eos_id(tok: Tokenizer) -> int:
    return tok.token_to_id(EOS)


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


def chars_per_token(tok: Tokenizer, ids: Sequence[int]) -> float:
    """Characters of text per token of `ids` (EOS spells none)."""
    text = tok.decode([int(i) for i in ids], skip_special_tokens=True)
    return len(text) / max(1, len(ids))


def bits_per_char(loss: float, chars_per_token: float) -> float:
    """Cross-entropy in nats per token -> bits per character: comparable across tokenizers."""
    return loss / math.log(2) / chars_per_token


def char_table(tok: Tokenizer) -> np.ndarray | None:
    """For a char tokenizer, an array from code point to id (-1: not in the vocabulary);
    None for any other tokenizer (one with merges or a pre-tokenizer)."""
    spec = json.loads(tok.to_str())
    if spec["model"]["type"] != "BPE" or spec["model"]["merges"] or spec["pre_tokenizer"]:
        return None
    single = {ord(t): i for t, i in tok.get_vocab().items() if len(t) == 1}
    table = np.full(max(single, default=0) + 1, -1, dtype=np.int64)
    table[list(single)] = list(single.values())
    return table


def encode_documents(tok: Tokenizer, docs: Sequence[str]) -> np.ndarray:
    """All documents as one token stream, each followed by EOS.

    The char tokenizer is a table lookup on code points (milliseconds for megabytes; a
    document with a character outside the vocabulary goes through the tokenizer). Other
    tokenizers encode lines in one parallel batch; BPE merges never cross a line break,
    which byte-level pre-tokenization nearly never does anyway.
    """
    eos, table = eos_id(tok), char_table(tok)
    dtype = np.uint16 if tok.get_vocab_size() <= 65536 else np.int32
    parts: list[np.ndarray] = []
    for doc in docs:
        ids = None
        if table is not None:
            cps = np.frombuffer(doc.encode("utf-32-le"), dtype=np.uint32)
            ids = table[np.minimum(cps, len(table) - 1)]
            ids[cps >= len(table)] = -1
            if (ids < 0).any():
                ids = None
        if ids is None:
            lines = doc.splitlines(keepends=True)
            ids = [i for enc in tok.encode_batch(lines, add_special_tokens=False) for i in enc.ids]
        parts += [np.asarray(ids, dtype=dtype), np.asarray([eos], dtype=dtype)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
