"""OpenAI's /v1/chat/completions in shelley's terms: read a chat request, shape the answers.

    c = parse_chat(json_body, server.shaper)                 # c.prompt: the conversation, rendered
    shape = ChatShape(meta, c, tokens)                       # chat.completion(.chunk) objects
    shape.start()        # the first SSE chunk of each choice: {"delta": {"role": "assistant", "content": ""}}

The request: `messages` (roles system, user, assistant; optional `name`, the speaker; content
a string or a list of text parts), `max_completion_tokens` or `max_tokens`, the sampling
controls completions has (serving/http/completions.py `controls`), `logprobs` (true/false) with
`top_logprobs` (0..5), `stream` + `stream_options.include_usage`, and the extension
`chat_template_kwargs` (vLLM's name: `user_name`, `assistant_name` set the default
speakers). The request is shaped as gRPC's chats are (serving/shape.py): rendered through
the template, and a reply ends at the template's default stop (where the corpus ends a
speech) as well as at the request's own `stop`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import InvalidRequest
from core.tokens import TokenTable
from serving.chat import check_kwargs, check_messages
from serving.http.completions import CompletionShape, Gathered, Meta, check_body, controls, field_of, trace_asked
from serving.engine.requests import Event, TokenLogprob
from serving.engine.sampling import SamplingParams
from serving.shape import Shaper
from serving.tools import CallStream, Tools, read_tools


@dataclass(frozen=True)
class ChatCompletion:
    prompt: str                 # the conversation, rendered through the template
    params: SamplingParams
    tools: Tools | None = None  # the reply may be tool calls (serving/tools.py)
    stream: bool = False
    include_usage: bool = False


def parse_chat(body: Any, shaper: Shaper) -> ChatCompletion:
    body = check_body(body)
    messages = check_messages(body.get("messages"))
    kwargs = check_kwargs(body.get("chat_template_kwargs"))
    if body.get("max_completion_tokens") is not None:
        max_tokens = field_of(body, "max_completion_tokens", int, None)
    else:
        max_tokens = field_of(body, "max_tokens", int, None)
    want = field_of(body, "logprobs", bool, False)
    top = field_of(body, "top_logprobs", int, None)
    if top is not None and not want:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    fields = dict(controls(body), max_tokens=max_tokens, logprobs=(top or 0) if want else None,
                  grammar_trace=trace_asked(body))
    tools = read_tools(body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls"))
    shaped = shaper.chat(messages, kwargs, fields, response_format=body.get("response_format"), tools=tools)
    options = field_of(body, "stream_options", dict, {})
    return ChatCompletion(shaped.prompt, shaped.params, tools, stream=field_of(body, "stream", bool, False),
                          include_usage=field_of(options, "include_usage", bool, False))


def chat_logprobs(entries: list[TokenLogprob] | None, tokens: TokenTable) -> dict:
    """OpenAI's chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    def one(token_id: int, logprob: float) -> dict:
        return {"token": tokens.text(token_id), "logprob": logprob, "bytes": list(tokens.bytes[token_id])}
    return {"content": [{**one(e.token_id, e.logprob), "top_logprobs": [one(i, lp) for i, lp in e.top]}
                        for e in entries or []]}


class ChatShape(CompletionShape):
    """chat.completion and chat.completion.chunk objects: the role in each choice's first
    chunk, then content deltas (or tool-call deltas, each call whole, when the request has
    tools and the reply calls them), the last with finish_reason."""
    object = "chat.completion.chunk"

    def __init__(self, meta: Meta, c: ChatCompletion, tokens: TokenTable):
        self.meta, self.c, self.tokens = meta, c, tokens
        self.calls = {i: CallStream(c.tools.choice) for i in range(c.params.n)} if c.tools else None

    def start(self) -> list[dict]:
        return [self._chunk({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}) for i in range(self.c.params.n)]

    def _logprobs(self, entries) -> dict | None:
        return None if self.c.params.logprobs is None else chat_logprobs(entries, self.tokens)

    def _chunk(self, choice: dict) -> dict:
        out = self.envelope([choice])
        if self.c.include_usage:
            out["usage"] = None
        return out

    def _deltas(self, index: int, text: str, finish: str) -> tuple[list[dict], str]:
        """The deltas a choice's next text makes, and its finish_reason."""
        if self.calls is None:
            return [{"content": text}] if text or not finish else [], finish
        calls = self.calls[index]
        deltas = calls.feed(text)
        if finish:
            last, finish = calls.finish(finish)
            deltas += last
        return deltas, finish

    def chunks(self, ev: Event) -> list[dict]:
        deltas, finish = self._deltas(ev.index, ev.text, ev.finish_reason)
        deltas = deltas or [{}] if finish or ev.logprobs or ev.grammar_trace else deltas
        return [self._chunk(self.traced({"index": ev.index, "delta": d,
                                         "logprobs": self._logprobs(ev.logprobs) if k == 0 else None,
                                         "finish_reason": (finish or None) if k == len(deltas) - 1 else None},
                                        ev.grammar_trace if k == 0 else None))
                for k, d in enumerate(deltas)]

    def whole(self, choices: dict[int, Gathered], u: dict) -> dict:
        out = []
        for i, g in sorted(choices.items()):
            deltas, finish = self._deltas(i, "".join(g.text), g.finish_reason)
            content = "".join(d.get("content", "") for d in deltas)
            message = {"role": "assistant", "content": content}
            calls = [c for d in deltas for c in d.get("tool_calls", [])]
            if calls:
                message = {"role": "assistant", "content": content or None,
                           "tool_calls": [{k: v for k, v in c.items() if k != "index"} for c in calls]}
            out.append(self.traced({"index": i, "message": message, "logprobs": self._logprobs(g.logprobs),
                                    "finish_reason": finish}, g.trace))
        body = self.envelope(out)
        body["object"] = "chat.completion"
        body["usage"] = u
        return body
