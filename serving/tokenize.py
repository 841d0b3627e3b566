"""Tokenize and detokenize, in vLLM's shapes, for both front doors.

    tokenize(server, {"prompt": "ROMEO:"})
    # {"tokens": [...], "count": 6, "max_model_len": 256, "token_strs": ["R", ...], "prompt": "ROMEO:"}
    tokenize(server, {"messages": [...], "add_generation_prompt": true, "chat_template_kwargs": {...}})
    detokenize(server, {"tokens": [5, 6]})     # {"prompt": "..."}
    token_view(server, prompt=..., messages=...) / text_of(server, ids)   # the same for gRPC

A conversation is rendered through the model's chat template first (serving/chat.py), so
the tokens are exactly what a chat request would prefill, and `prompt` shows that text.
`token_strs` are the tokens' texts alone (`bytes:\\xNN` for a byte that is not UTF-8 on its
own). Counts over the context are reported, not refused: that is what the count is for.
"""
from __future__ import annotations

from typing import Any

from core.errors import InvalidRequest
from serving.chat import check_kwargs, check_messages
from serving.engine.limits import check_text


def token_view(server, prompt: str | None = None, messages: list[dict] | None = None, kwargs: dict | None = None,
               add_generation_prompt: bool = True) -> dict:
    if messages is not None:
        prompt = server.chat.render(messages, kwargs, add_generation_prompt)
    prompt = prompt or ""
    check_text(prompt, "prompt")
    ids = server.artifact.tokenizer.encode(prompt, add_special_tokens=False).ids
    tokens = server.artifact.tokens
    return {"tokens": ids, "count": len(ids), "max_model_len": server.card.context_length,
            "token_strs": [tokens.text(i) for i in ids], "prompt": prompt}


def text_of(server, ids: list[int]) -> str:
    """The text the ids spell (the bytes of each token in turn; special tokens by name)."""
    table = server.artifact.tokens
    bad = next((i for i in ids if not 0 <= i < len(table)), None)
    if bad is not None:
        raise InvalidRequest(f"tokens must be token ids 0..{len(table) - 1}, got {bad}", param="tokens")
    return b"".join(table.bytes[i] for i in ids).decode("utf-8", errors="replace")


def tokenize(server, body: Any) -> dict:
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object: {\"prompt\": ...} or {\"messages\": [...]}")
    if body.get("messages") is not None:
        add = body.get("add_generation_prompt", True)
        if not isinstance(add, bool):
            raise InvalidRequest("add_generation_prompt must be true or false", param="add_generation_prompt")
        return token_view(server, messages=check_messages(body["messages"]),
                          kwargs=check_kwargs(body.get("chat_template_kwargs")), add_generation_prompt=add)
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise InvalidRequest("prompt must be a string", param="prompt")
    return token_view(server, prompt=prompt)


def detokenize(server, body: Any) -> dict:
    ids = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidRequest("tokens must be a list of token ids (integers)", param="tokens")
    return {"prompt": text_of(server, ids)}
