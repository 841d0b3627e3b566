"""OpenAI's /v1/completions in shelley's terms: read a request body, shape the answers.

    c = parse_completion(json_body)      # -> Completion(prompt, params, stream, include_usage)
    completion(rid, model, created, text, finish, logprobs, usage(5, 16))   # stream: false
    chunk(rid, model, created, text, finish, logprobs)                      # one SSE event
    error_body("max_tokens must be ...", "invalid_request_error", param="max_tokens")

Types are checked here (`max_tokens must be an integer`); limits by the engine's `validate`,
so gRPC and HTTP refuse the same requests with the same messages. Unknown fields are
ignored; known ones this server cannot honour (n > 1, echo, penalties, ...) are refused
rather than silently dropped. Extensions, as in vLLM: `top_k`, `ignore_eos`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import InvalidRequest
from serving.sampling import SamplingParams

DEFAULT_MAX_TOKENS = 16    # OpenAI's default for completions (gRPC's is 64)
# Known OpenAI fields this server does not implement: accepted only at their neutral value.
NEUTRAL = {"n": (1,), "best_of": (1,), "echo": (False,), "suffix": ("",), "presence_penalty": (0,),
           "frequency_penalty": (0,), "logit_bias": ({},)}


@dataclass(frozen=True)
class Completion:
    prompt: str
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _field(body: dict, name: str, kind: type, default: Any) -> Any:
    """body[name] checked against a JSON type; absent or null -> default."""
    v = body.get(name)
    if v is None:
        return default
    ok = {int: isinstance(v, int) and not isinstance(v, bool),
          float: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: isinstance(v, bool), str: isinstance(v, str), dict: isinstance(v, dict)}[kind]
    if not ok:
        noun = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object"}[kind]
        raise InvalidRequest(f"{name} must be {noun}, got {_show(v)}", param=name)
    if kind is float:
        try:
            return float(v)
        except OverflowError:
            raise InvalidRequest(f"{name} is out of range, got {_show(v)}", param=name) from None
    return v


def parse_completion(body: Any) -> Completion:
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be a JSON object, got {_show(body)}")
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise InvalidRequest(f"prompt must be a string (one prompt per request), got {_show(prompt)}",
                             param="prompt")
    for name, neutral in NEUTRAL.items():
        if body.get(name) is not None and body[name] not in neutral:
            raise InvalidRequest(f"{name} must be {neutral[0]!r} (or left out): this server does not "
                                 f"support it, got {_show(body[name])}", param=name)
    stop = body.get("stop")
    stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest(f"stop must be a string or a list of strings, got {_show(body.get('stop'))}",
                             param="stop")
    seed = _field(body, "seed", int, None)
    if seed is not None and seed < 0:
        raise InvalidRequest(f"seed must be a non-negative integer, got {seed}", param="seed")
    params = SamplingParams(
        max_tokens=_field(body, "max_tokens", int, DEFAULT_MAX_TOKENS),
        temperature=_field(body, "temperature", float, 1.0),
        top_k=_field(body, "top_k", int, 0), top_p=_field(body, "top_p", float, 1.0),
        seed=seed, stop=tuple(stop), ignore_eos=_field(body, "ignore_eos", bool, False),
        logprobs=_field(body, "logprobs", int, None))
    options = _field(body, "stream_options", dict, {})
    return Completion(prompt, params, stream=_field(body, "stream", bool, False),
                      include_usage=_field(options, "include_usage", bool, False))


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chunk(rid: str, model: str, created: int, text: str, finish: str | None,
          logprobs: dict | None, with_usage: bool = False) -> dict:
    """One streamed event; `with_usage` adds `"usage": null` as OpenAI does when the client
    asked for a final usage chunk."""
    out = {"id": rid, "object": "text_completion", "created": created, "model": model,
           "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish or None}]}
    if with_usage:
        out["usage"] = None
    return out


def usage_chunk(rid: str, model: str, created: int, u: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [], "usage": u}


def completion(rid: str, model: str, created: int, text: str, finish: str,
               logprobs: dict | None, u: dict) -> dict:
    body = chunk(rid, model, created, text, finish, logprobs)
    body["usage"] = u
    return body


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
