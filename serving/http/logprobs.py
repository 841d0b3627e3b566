"""Per-token reports in HTTP's shapes: logprobs in OpenAI's legacy completions shape, and
shelley's grammar trace (completions and chat, `shelley_grammar_trace`).

    openai_logprobs(event.logprobs, artifact.tokens, offset=0)
    # {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{tok: lp}, ...], "text_offset": [...]}
    grammar_trace(event.grammar_trace, artifact.tokens)
    # [{"sampled": {token, token_id, logprob}, "wanted": {token, token_id, logprob, allowed},
    #   "allowed_tokens": 12, "allowed_logprob": -3.2, "allowed_top": [{token, token_id, logprob}, ...]}, ...]

The engine fills `Event.logprobs` (TokenLogprob, one per token id); the numbers are of the
model's distribution before temperature, top-k, top-p, penalties and logit_bias. Each
token's text is its text alone (core/tokens.py): a byte-fallback or byte-level token that
is not valid UTF-8 alone is written `bytes:\\xNN`, as OpenAI does.
"""
from __future__ import annotations

from core.tokens import TokenTable
from serving.engine.requests import GrammarStep, TokenLogprob


def openai_logprobs(entries: list[TokenLogprob], tokens: TokenTable, offset: int) -> dict:
    """OpenAI's legacy completions `logprobs` object for these tokens. `offset` is where the
    first one starts in the completion text (the characters sent before it); the next ones
    follow by their own lengths, a lone byte counting for none."""
    texts = [tokens.text(e.token_id) for e in entries]
    starts = []
    for t in texts:
        starts.append(offset)
        offset += 0 if t.startswith("bytes:") else len(t)
    return {"tokens": texts,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{tokens.text(i): lp for i, lp in e.top} for e in entries],
            "text_offset": starts}


def grammar_trace(steps: list[GrammarStep], tokens: TokenTable) -> list[dict]:
    """Per token sampled under a grammar: the token drawn, the model's own top token before
    the mask (and whether the mask allowed it), how many tokens the mask allowed, the
    model's probability mass on them (log) and the most likely of them. An extension (vLLM and OpenAI have no such
    field): its name says whose."""
    def one(token_id: int, logprob: float) -> dict:
        return {"token": tokens.text(token_id), "token_id": token_id, "logprob": logprob}
    return [{"sampled": one(s.token_id, s.logprob), "wanted": {**one(s.wanted, s.wanted_logprob),
                                                                "allowed": s.wanted_allowed},
             "allowed_tokens": s.allowed, "allowed_logprob": s.allowed_logprob,
             "allowed_top": [one(i, lp) for i, lp in s.allowed_top]} for s in steps]
