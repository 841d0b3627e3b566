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

from serving.engine import TokenLogprob
from serving.sampling import token_bytes


class TokenTexts:
    """id -> the token's text alone: its UTF-8 bytes decoded, or `bytes:\\xNN...` when they
    are not valid UTF-8 on their own (one byte of a multi-byte character)."""

    def __init__(self, tokenizer):
        self.raw = token_bytes(tokenizer)
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            raw = self.raw[token_id]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            self.cache[token_id] = text
        return text


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
