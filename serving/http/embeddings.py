"""OpenAI's /v1/embeddings in shelley's terms: read a request into token rows, shape the answer.

    e = parse_embeddings(json_body, artifact.tokenizer, context=256, vocab=V, width=C)
    vectors = Embedder(artifact).embed(e.rows)          # serving/embed.py: mean-pooled, length 1
    embeddings_body(vectors, e, model="default")         # {"object": "list", "data": [...], "usage"}

The request: `input` as OpenAI takes it (a string, a list of strings, a list of token ids,
or a list of such lists; at most MAX_INPUTS, each non-empty and within the context),
`encoding_format` `float` [default] or `base64` (the float32 values' little-endian bytes,
as OpenAI sends them), `dimensions` (only the model's own width: its vectors were not
trained to be shortened), `model` and `user` (accepted, ignored). Each refusal is a 400
naming the field, `input[3]` for one input.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InvalidRequest
from serving.engine.limits import check_text
from serving.http.completions import _show, check_body, field_of

MAX_INPUTS = 2048    # OpenAI's limit per request


@dataclass(frozen=True)
class EmbeddingsRequest:
    rows: list[list[int]]          # one token-id list per input
    encoding_format: str = "float"

    @property
    def tokens(self) -> int:
        return sum(len(r) for r in self.rows)


def _is_ids(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)


def _inputs(value: Any) -> list[tuple[str, Any]]:
    """(param, a string or a list of ids) per input."""
    if isinstance(value, str) or _is_ids(value):
        return [("input", value)]
    if not isinstance(value, list) or not value:
        raise InvalidRequest("input must be a string, a list of strings, a list of token ids, or a list of "
                             f"token-id lists, got {_show(value)}", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"input has {len(value)} items; the limit is {MAX_INPUTS}", param="input")
    for i, v in enumerate(value):
        if not (isinstance(v, str) or _is_ids(v)):
            raise InvalidRequest(f"input[{i}] must be a string or a non-empty list of token ids, got {_show(v)}",
                                 param=f"input[{i}]")
    return [(f"input[{i}]", v) for i, v in enumerate(value)]


def parse_embeddings(body: Any, tokenizer, context: int, vocab: int, width: int) -> EmbeddingsRequest:
    body = check_body(body)
    fmt = field_of(body, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise InvalidRequest(f"encoding_format must be \"float\" or \"base64\", got {_show(fmt)}",
                             param="encoding_format")
    dims = field_of(body, "dimensions", int, None)
    if dims is not None and dims != width:
        raise InvalidRequest(f"dimensions must be {width} (or left out): this model's embeddings have {width} "
                             f"dimensions and were not trained to be shortened, got {dims}", param="dimensions")
    rows = []
    for param, v in _inputs(body.get("input")):
        if isinstance(v, str):
            check_text(v, param)
            ids = tokenizer.encode(v, add_special_tokens=False).ids if v else []
            if not ids:
                raise InvalidRequest(f"{param} is empty; embed some text", param=param)
        else:
            bad = next((t for t in v if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequest(f"{param} holds token id {bad}; ids are 0..{vocab - 1}", param=param)
            ids = list(v)
        if len(ids) > context:
            raise InvalidRequest(f"{param} is {len(ids)} tokens; the limit is the context length, {context}",
                                 param=param)
        rows.append(ids)
    return EmbeddingsRequest(rows, fmt)


def embeddings_body(vectors: np.ndarray, e: EmbeddingsRequest, model: str) -> dict:
    def encode(v: np.ndarray):
        return base64.b64encode(v.astype("<f4").tobytes()).decode() if e.encoding_format == "base64" else v.tolist()
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": e.tokens, "total_tokens": e.tokens}}
