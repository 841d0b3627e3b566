"""Every limit of a request, in one place, for both front doors.

    check_params(params, max_new_tokens=1024, vocab=V, slots=32)   # InvalidRequest(message, param=...)
    check_text(prompt, "prompt")                                    # a lone surrogate is refused
    ids = check_prompt(ids, context=256, truncate=None, param="prompt")   # truncation, the context
    default_max_tokens("chat", n=2, max_new_tokens=1024)           # 256: what an unset max_tokens means
    merge_stops(("END",), chat_stop)                                # a chat's stops + the template's

Front ends check types (serving/http/completions.py, the protobuf itself) and shape a
request once (serving/shape.py); the engine calls `check_params` when a request is
submitted and `check_prompt` once it is encoded. So gRPC and HTTP refuse the same requests
with the same messages, and nothing reaches the engine that it cannot serve. Each message
names the field and its limit; `param` carries the field.
"""
from __future__ import annotations

from core.errors import InvalidRequest
from serving.engine.sampling import MAX_LOGPROBS, SamplingParams

MAX_STOP, MAX_STOP_CHARS = 8, 64
MAX_INT32 = 2**31 - 1    # top_k's limit: gRPC's int32, and numpy's arrays hold it
MAX_N, MAX_PENALTY, MAX_BIAS, MAX_BIAS_ENTRIES = 8, 2.0, 100.0, 300
# What an unset max_tokens means, by kind of request: OpenAI's 16 for /v1/completions, 64 for a
# gRPC prompt, 256 for a chat (a speech rarely runs longer; the template's stop usually ends it
# first). Never more than a request's share of --max-new-tokens (n choices each take one).
DEFAULT_MAX_TOKENS = {"completions": 16, "generate": 64, "chat": 256}


def default_max_tokens(kind: str, n: int, max_new_tokens: int) -> int:
    return max(1, min(DEFAULT_MAX_TOKENS[kind], max_new_tokens // max(n, 1)))


def merge_stops(own: tuple[str, ...], added: tuple[str, ...]) -> tuple[str, ...]:
    """A request's stop strings with those a chat template adds (once each), within MAX_STOP."""
    own = tuple(s for s in own if s not in added)
    if len(own) + len(added) > MAX_STOP:
        raise InvalidRequest(f"stop has {len(own)} strings; chat adds the template's {len(added)}, so "
                             f"the limit is {MAX_STOP - len(added)}", param="stop")
    return (*own, *added)


def check_prompt(ids: list[int], context: int, truncate: int | None, param: str = "prompt") -> list[int]:
    """The prompt's ids within the context: `truncate` keeps only the last that many (-1: the
    context length, vLLM's truncate_prompt_tokens); a longer prompt is refused."""
    if truncate is not None:
        if not (truncate == -1 or 1 <= truncate <= context):
            raise InvalidRequest(f"truncate_prompt_tokens must be -1 (the context) or 1 to {context}, "
                                 f"got {truncate}", param="truncate_prompt_tokens")
        ids = ids[-(context if truncate == -1 else truncate):]
    if len(ids) > context:
        what = "prompt is" if param == "prompt" else f"the {param} render to"
        raise InvalidRequest(f"{what} {len(ids)} tokens; the limit is the context length, {context}",
                             param=param)
    return ids


def check_text(text: str, param: str) -> None:
    """Refuse a string that cannot be UTF-8 (JSON may carry a lone surrogate, `"\\ud800"`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(f"{param} is not valid Unicode: a lone surrogate U+{ord(text[e.start]):04X} at "
                             f"character {e.start}; send UTF-8 text (surrogates only in escaped pairs)",
                             param=param) from None


def check_params(p: SamplingParams, max_new_tokens: int, vocab: int, slots: int) -> None:
    """Refuse (InvalidRequest naming the field and its limit) what the engine cannot serve.
    `slots` is the engine's batch size: a request's n choices must fit in it at once."""
    limit = max_new_tokens
    if not 1 <= p.max_tokens <= limit:
        raise InvalidRequest(f"max_tokens must be between 1 and {limit}, got {p.max_tokens}", param="max_tokens")
    if not p.temperature >= 0:
        raise InvalidRequest(f"temperature must be >= 0, got {p.temperature}", param="temperature")
    if not 0 < p.top_p <= 1:
        raise InvalidRequest(f"top_p must be in (0, 1], got {p.top_p}", param="top_p")
    if not 0 <= p.top_k <= MAX_INT32:
        raise InvalidRequest(f"top_k must be between 0 and {MAX_INT32} (0 = off), got {p.top_k}", param="top_k")
    if p.logprobs is not None and not 0 <= p.logprobs <= MAX_LOGPROBS:
        raise InvalidRequest(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {p.logprobs}", param="logprobs")
    if len(p.stop) > MAX_STOP:
        raise InvalidRequest(f"stop has {len(p.stop)} strings; the limit is {MAX_STOP}", param="stop")
    for s in p.stop:
        if not s or len(s) > MAX_STOP_CHARS:
            raise InvalidRequest(f"stop strings must be 1 to {MAX_STOP_CHARS} characters, got {len(s)}",
                                 param="stop")
        check_text(s, "stop")
    _check_controls(p, max_new_tokens, vocab, slots)


def _check_controls(p: SamplingParams, max_new_tokens: int, vocab: int, slots: int) -> None:
    """The limits of penalties, logit_bias, min_tokens, n and prompt_logprobs."""
    for name in ("presence_penalty", "frequency_penalty"):
        if not -MAX_PENALTY <= getattr(p, name) <= MAX_PENALTY:
            raise InvalidRequest(f"{name} must be between -{MAX_PENALTY:g} and {MAX_PENALTY:g}, "
                                 f"got {getattr(p, name)}", param=name)
    if not 0 < p.repetition_penalty < float("inf"):
        raise InvalidRequest(f"repetition_penalty must be > 0 (1 = off), got {p.repetition_penalty}",
                             param="repetition_penalty")
    if len(p.logit_bias) > MAX_BIAS_ENTRIES:
        raise InvalidRequest(f"logit_bias has {len(p.logit_bias)} entries; the limit is {MAX_BIAS_ENTRIES}",
                             param="logit_bias")
    if sum(v <= -MAX_BIAS for _, v in p.logit_bias) >= vocab - 1:
        raise InvalidRequest(f"logit_bias bans every token but one or none (the vocabulary is {vocab}); "
                             "ban fewer", param="logit_bias")
    for token, value in p.logit_bias:
        if not 0 <= token < vocab:
            raise InvalidRequest(f"logit_bias keys must be token ids 0..{vocab - 1}, got {token}",
                                 param="logit_bias")
        if not -MAX_BIAS <= value <= MAX_BIAS:
            raise InvalidRequest(f"logit_bias values must be between -{MAX_BIAS:g} and {MAX_BIAS:g}, "
                                 f"got {value} for token {token}", param="logit_bias")
    if not 0 <= p.min_tokens <= p.max_tokens:
        raise InvalidRequest(f"min_tokens must be between 0 and max_tokens ({p.max_tokens}), got {p.min_tokens}",
                             param="min_tokens")
    most = min(MAX_N, slots)
    if not 1 <= p.n <= most:
        raise InvalidRequest(f"n must be between 1 and {most}, got {p.n}", param="n")
    if p.n * p.max_tokens > max_new_tokens:
        raise InvalidRequest(f"n x max_tokens is {p.n} x {p.max_tokens} = {p.n * p.max_tokens} tokens; the "
                             f"limit for one request is {max_new_tokens}: lower n or max_tokens",
                             param="n")
    if p.prompt_logprobs is not None and not 0 <= p.prompt_logprobs <= MAX_LOGPROBS:
        raise InvalidRequest(f"prompt_logprobs must be between 0 and {MAX_LOGPROBS}, got {p.prompt_logprobs}",
                             param="prompt_logprobs")
