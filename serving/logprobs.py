"""Token logprobs for the front ends: each token's own text, and OpenAI's `logprobs` object.

    texts = TokenTexts(tokenizer)
    texts(42)                                  # "e", or "bytes:\\xe2" for a lone UTF-8 byte
    openai_logprobs(event.logprobs, texts, offset=0)
    # {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{tok: lp}, ...], "text_offset": [...]}

The engine fills `Event.logprobs` (TokenLogprob, one per token id);
the numbers are of the model's distribution before temperature, top-k and top-p. Text is
each token decoded on its own: a byte-fallback or byte-level token that is not valid UTF-8
alone is written `bytes:\\xNN`, as OpenAI does.
"""
from __future__ import annotations

import re

from serving.engine import TokenLogprob

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_LEVEL = _byte_level_table()


class TokenTexts:
    """id -> the token's text alone (cached: a vocabulary is small)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.cache[token_id] = self._render(token_id)
        return text

    def _render(self, token_id: int) -> str:
        text = self.tok.decode([token_id], skip_special_tokens=False)
        if "\ufffd" not in text:
            return text
        name = self.tok.id_to_token(token_id) or ""
        m = _BYTE_FALLBACK.fullmatch(name)
        if m:
            raw = bytes([int(m.group(1), 16)])
        elif name and all(c in _BYTE_LEVEL for c in name):
            raw = bytes(_BYTE_LEVEL[c] for c in name)
        else:
            return text
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def openai_logprobs(entries: list[TokenLogprob], texts: TokenTexts, offset: int) -> dict:
    """OpenAI's legacy completions `logprobs` object for these tokens. `offset` is where the
    first one starts in the completion text (the characters sent before it); the next ones
    follow by their own lengths, a lone byte counting for none."""
    tokens = [texts(e.token_id) for e in entries]
    starts = []
    for t in tokens:
        starts.append(offset)
        offset += 0 if t.startswith("bytes:") else len(t)
    return {"tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{texts(i): lp for i, lp in e.top} for e in entries],
            "text_offset": starts}
