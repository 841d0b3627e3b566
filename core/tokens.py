"""Token ids as bytes and text, built once per tokenizer: the detokeniser.

    table = TokenTable(tokenizer)      # core/artifact.py builds one per artifact
    table.bytes[42]                    # b"e": what the token adds to the text
    table.text(42)                     # "e"; a lone UTF-8 byte reads "bytes:\\xe2" (OpenAI's form)
    stream = table.stream()            # incremental text for one request
    stream.step(42) -> "e"; stream.flush() -> ""
    EOS                                # "<|endoftext|>", the one special token (training adds it)

Byte-level BPE spells bytes in GPT-2's printable alphabet; the char tokenizer's byte
fallback tokens are `<0xNN>`; special tokens read as their names. A stream never ends a
delta inside a UTF-8 sequence, at O(1) a token (decoding a window of ids each step is not).
"""
from __future__ import annotations

import codecs

EOS = "<|endoftext|>"   # the end-of-text token's text: every tokenizer's one special token


def gpt2_byte_chars() -> list[str]:
    """GPT-2's reversible map from the 256 bytes to printable characters, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def byte_fallback(piece: str) -> int | None:
    """The byte a `<0xNN>` fallback token stands for, else None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def token_bytes(tokenizer) -> list[bytes]:
    """Every token id's UTF-8 bytes: what it adds to the text (special tokens: their name)."""
    from tokenizers import decoders
    byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
    unicode_to_byte = {c: b for b, c in enumerate(gpt2_byte_chars())}
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    out = []
    for i in range(tokenizer.get_vocab_size()):
        piece = tokenizer.id_to_token(i) or ""
        if piece in specials:
            out.append(piece.encode())
        elif byte_level:
            out.append(bytes(unicode_to_byte[c] for c in piece))
        elif byte_fallback(piece) is not None:
            out.append(bytes([byte_fallback(piece)]))
        else:
            out.append(tokenizer.decode([i], skip_special_tokens=False).encode())
    return out


def _alone(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class TextStream:
    """Incremental detokenizer for one request: text deltas that never end inside a UTF-8
    sequence. An incomplete sequence is held until its last byte arrives; bytes that can
    never complete become U+FFFD, as the tokenizer's own decode shows them."""

    def __init__(self, table: list[bytes]):
        self.table = table
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id: int) -> str:
        return self.decoder.decode(self.table[token_id])

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


class TokenTable:
    """Every token id's bytes and its text alone, for a tokenizer's whole vocabulary."""

    def __init__(self, tokenizer):
        self.bytes = token_bytes(tokenizer)
        self.texts = [_alone(b) for b in self.bytes]

    def __len__(self) -> int:
        return len(self.bytes)

    def text(self, token_id: int) -> str:
        """The token decoded on its own; `bytes:\\xNN...` when that is not valid UTF-8."""
        return self.texts[token_id]

    def stream(self) -> TextStream:
        return TextStream(self.bytes)
