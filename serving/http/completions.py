"""OpenAI's /v1/completions in shelley's terms: read a request body, shape the answers.

    c = parse_completion(json_body, shaper)  # -> Completion(prompt, params, stream, include_usage, echo)
    shape = CompletionShape(meta, c, prompt_ids, tokens)   # per request: SSE chunks and the whole answer
    shape.chunks(event); shape.whole(gathered_choices, usage(5, 16))
    error_body("max_tokens must be ...", "invalid_request_error", param="max_tokens")

Types are checked here (`max_tokens must be an integer`); the request is shaped as gRPC's
are (serving/shape.py: defaults) and its limits checked by the engine's `validate`
(serving/engine/limits.py), so gRPC and HTTP refuse the same requests with the same messages.
Unknown fields are ignored; known ones this server cannot honour (`best_of`, `suffix`) are
refused rather than silently dropped. Extensions, as in vLLM: `top_k`, `ignore_eos`,
`repetition_penalty`, `min_tokens`; shelley's own (completions and chat): `shelley_grammar_trace`
(true: each choice carries a `shelley_grammar_trace` list, one entry per token sampled under
its `response_format` or tools' grammar: what the model wanted and what the mask allowed).
Chat's shapes are in serving/http/chat_completions.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidRequest
from core.tokens import TokenTable
from serving.http.logprobs import grammar_trace, openai_logprobs
from serving.engine.requests import Event, TokenLogprob
from serving.engine.sampling import SamplingParams
from serving.shape import Shaper

# Known OpenAI fields this server does not implement: accepted only at their neutral value.
NEUTRAL = {"best_of": (1,), "suffix": ("",)}
TRACE = "shelley_grammar_trace"   # the extension's name, in the request and on each choice


@dataclass(frozen=True)
class Completion:
    prompt: str
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    echo: bool = False


@dataclass(frozen=True)
class Meta:
    """What every chunk of one answer repeats."""
    rid: str
    model: str
    created: int


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def field_of(body: dict, name: str, kind: type, default: Any) -> Any:
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


def _logit_bias(body: dict) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} (JSON keys are strings) as (id, bias) pairs."""
    bias = field_of(body, "logit_bias", dict, {})
    out = []
    for key, value in bias.items():
        if not (key.isascii() and key.lstrip("-").isdigit() and len(key) <= 12):
            raise InvalidRequest(f"logit_bias keys must be token ids (integers, as JSON strings), got {_show(key)}",
                                 param="logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"logit_bias values must be numbers, got {_show(value)} for {key}", param="logit_bias")
        out.append((int(key), float(value)))
    return tuple(out)


def controls(body: dict) -> dict:
    """The SamplingParams fields completions and chat share, type-checked (max_tokens apart:
    chat reads two names for it)."""
    stop = body.get("stop")
    stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest(f"stop must be a string or a list of strings, got {_show(body.get('stop'))}",
                             param="stop")
    seed = field_of(body, "seed", int, None)
    if seed is not None and seed < 0:
        raise InvalidRequest(f"seed must be a non-negative integer, got {seed}", param="seed")
    return dict(
        temperature=field_of(body, "temperature", float, 1.0),
        top_k=field_of(body, "top_k", int, 0), top_p=field_of(body, "top_p", float, 1.0),
        seed=seed, stop=tuple(stop), ignore_eos=field_of(body, "ignore_eos", bool, False),
        presence_penalty=field_of(body, "presence_penalty", float, 0.0),
        frequency_penalty=field_of(body, "frequency_penalty", float, 0.0),
        repetition_penalty=field_of(body, "repetition_penalty", float, 1.0),
        logit_bias=_logit_bias(body), min_tokens=field_of(body, "min_tokens", int, 0),
        n=field_of(body, "n", int, 1), truncate_prompt_tokens=field_of(body, "truncate_prompt_tokens", int, None))


def check_body(body: Any) -> dict:
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be a JSON object, got {_show(body)}")
    for name, neutral in NEUTRAL.items():
        if body.get(name) is not None and body[name] not in neutral:
            raise InvalidRequest(f"{name} must be {neutral[0]!r} (or left out): this server does not "
                                 f"support it, got {_show(body[name])}", param=name)
    return body


def parse_completion(body: Any, shaper: Shaper) -> Completion:
    body = check_body(body)
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise InvalidRequest(f"prompt must be a string (one prompt per request), got {_show(prompt)}",
                             param="prompt")
    logprobs, echo = field_of(body, "logprobs", int, None), field_of(body, "echo", bool, False)
    fields = dict(controls(body), max_tokens=field_of(body, "max_tokens", int, None), logprobs=logprobs,
                  prompt_logprobs=logprobs if echo else None, grammar_trace=trace_asked(body))
    shaped = shaper.completion(prompt, fields, response_format=body.get("response_format"))
    options = field_of(body, "stream_options", dict, {})
    return Completion(shaped.prompt, shaped.params, stream=field_of(body, "stream", bool, False),
                      include_usage=field_of(options, "include_usage", bool, False), echo=echo)


def trace_asked(body: dict) -> bool:
    """shelley's extension: report what the grammar did to each token (the playground's structured mode)."""
    return field_of(body, TRACE, bool, False)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage; cached_tokens: the prompt tokens the prefix cache already held."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


@dataclass
class Gathered:
    """One choice's events, put together for a whole (non-streamed) answer."""
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    finish_reason: str = ""
    completion_tokens: int = 0
    trace: list = field(default_factory=list)   # GrammarSteps, when asked
    cached_tokens: int = 0

    def add(self, ev: Event) -> None:
        self.text.append(ev.text)
        self.logprobs.extend(ev.logprobs or [])
        self.trace.extend(ev.grammar_trace or [])
        self.prompt_logprobs = self.prompt_logprobs or ev.prompt_logprobs
        if ev.finish_reason:
            self.finish_reason, self.completion_tokens = ev.finish_reason, ev.completion_tokens
            self.cached_tokens = ev.cached_tokens


class CompletionShape:
    """The answers to one completion request: `chunk(event)` per SSE event, `whole(...)` at once.
    With echo the prompt comes first (in a choice's first chunk), and with logprobs its
    tokens come first too, the very first with no logprob (nothing comes before it)."""
    object = "text_completion"

    def __init__(self, meta: Meta, c: Completion, prompt_ids: list[int], tokens: TokenTable):
        self.meta, self.c, self.prompt_ids, self.tokens = meta, c, prompt_ids, tokens
        self.sent: dict[int, int] = {}      # characters sent so far, per choice (logprobs' text_offset)
        self.prompt = c.prompt              # what echo sends: the tokens kept, when truncated
        if c.prompt and c.params.truncate_prompt_tokens is not None:
            self.prompt = b"".join(tokens.bytes[i] for i in prompt_ids).decode("utf-8", errors="replace")

    def start(self) -> list[dict]:
        return []

    def _choice(self, index: int, text: str, finish: str | None, lps: list | None, prompt_lps, trace=None) -> dict:
        first, offset = index not in self.sent, self.sent.get(index, 0)
        lp = None
        if self.c.params.logprobs is not None:
            lp = openai_logprobs(lps or [], self.tokens, offset + (len(self.prompt) if self.c.echo else 0))
            if self.c.echo and first:
                lp = join_logprobs(echo_logprobs(self.prompt_ids, prompt_lps, self.tokens, self.prompt), lp)
        self.sent[index] = offset + len(text)
        if self.c.echo and first:
            text = self.prompt + text
        return self.traced({"text": text, "index": index, "logprobs": lp, "finish_reason": finish or None}, trace)

    def traced(self, choice: dict, steps) -> dict:
        """A choice with its grammar trace, when the request asked (empty: no grammar step here)."""
        if self.c.params.grammar_trace:
            choice[TRACE] = grammar_trace(steps or [], self.tokens)
        return choice

    def chunk(self, ev: Event) -> dict:
        out = self.envelope([self._choice(ev.index, ev.text, ev.finish_reason, ev.logprobs, ev.prompt_logprobs,
                                          ev.grammar_trace)])
        if self.c.include_usage:
            out["usage"] = None
        return out

    def chunks(self, ev: Event) -> list[dict]:
        """The SSE chunks one engine event makes (chat's tool calls may make none or several)."""
        return [self.chunk(ev)]

    def whole(self, choices: dict[int, Gathered], u: dict) -> dict:
        body = self.envelope([self._choice(i, "".join(g.text), g.finish_reason, g.logprobs, g.prompt_logprobs, g.trace)
                              for i, g in sorted(choices.items())])
        body["usage"] = u
        return body

    def envelope(self, choices: list[dict]) -> dict:
        m = self.meta
        return {"id": m.rid, "object": self.object, "created": m.created, "model": m.model, "choices": choices}

    def usage_chunk(self, u: dict) -> dict:
        return {**self.envelope([]), "usage": u}


def echo_logprobs(prompt_ids: list[int], entries: list[TokenLogprob] | None, tokens: TokenTable,
                  prompt: str) -> dict:
    """The prompt's tokens in OpenAI's legacy logprobs shape: the first has none (null)."""
    if not prompt:     # an empty prompt is the end-of-text token, which is not text
        return openai_logprobs([], tokens, 0)
    first = tokens.text(prompt_ids[0])
    rest = openai_logprobs(entries or [], tokens, 0 if first.startswith("bytes:") else len(first))
    return {"tokens": [first] + rest["tokens"], "token_logprobs": [None] + rest["token_logprobs"],
            "top_logprobs": [None] + rest["top_logprobs"], "text_offset": [0] + rest["text_offset"]}


def join_logprobs(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
