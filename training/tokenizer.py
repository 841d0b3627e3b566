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

from core.tokens import EOS, gpt2_byte_chars

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


def char_counts(tok: Tokenizer) -> np.ndarray:
    """Characters each token id spells, so that `char_counts(tok)[ids].sum()` is the length of
    the text `ids` encode: a special token spells none; a byte spells one if it starts a UTF-8
    character (a continuation byte none), whether a char tokenizer's fallback `<0x..>` or a
    byte-level BPE's."""
    spec = json.loads(tok.to_str())
    byte_level = (spec.get("pre_tokenizer") or {}).get("type") == "ByteLevel"
    to_byte = {c: b for b, c in enumerate(gpt2_byte_chars())} if byte_level else {}
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    counts = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for token, i in tok.get_vocab().items():
        if token in special:
            continue
        if byte_level:
            counts[i] = sum(to_byte[c] & 0xC0 != 0x80 for c in token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            counts[i] = int(token[3:5], 16) & 0xC0 != 0x80
        else:
            counts[i] = len(token)
    return counts


def bits_per_char(loss: float, chars_per_token: float) -> float:
    """Cross-entropy in nats per token -> bits per character: comparable across tokenizers
    on the same text. `chars_per_token`: of the tokens the loss was measured on."""
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
