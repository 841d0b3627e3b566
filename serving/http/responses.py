"""OpenAI's /v1/responses in shelley's terms, stateless: read a request, shape the answer and
its typed stream.

    r = parse_response(json_body, max_new_tokens=1024)   # messages, fields, tools, response_format
    s = server.shaper.chat(r.messages, r.kwargs, r.fields, response_format=r.response_format,
                           tools=r.tools, format_param="text.format", param="input")   # as chat's
    shape = ResponseShape(meta, r, tokens, prompt_tokens)
    shape.opening()      # response.created, .in_progress (+ the message item, when no tools)
    shape.chunk(event)   # [.output_item.added, .content_part.added], .output_text.delta; a call's 4 events
    shape.closing()      # .output_text.done, .content_part.done, .output_item.done, .completed
    shape.whole(gathered_choices, usage)                  # the `response` object at once

Why its own door: the openai-agents SDK and LangChain's Responses-only features call
/v1/responses, not chat. It is chat underneath (the same template, stops, grammars, tool
calls and engine); what differs is the envelope. The request: `input` (a string, or items:
messages with roles user, assistant, system and developer (read as system), whose content
is a string or `input_text` / `output_text` parts; earlier `function_call`s and their
`function_call_output`s: serving/http/responses_input.py), `instructions` (a system message
first), `max_output_tokens`, `temperature`, `top_p`, `top_logprobs` or `include:
["message.output_text.logprobs"]`, `truncation` (`auto` keeps the input's end), `text.format`
(`json_schema`, `json_object` and chat's extensions: constrained decoding), `tools` (function
tools) with `tool_choice` and `parallel_tool_calls`, `stream`, and chat's extensions (`top_k`,
`seed`, `stop`, penalties, `chat_template_kwargs`).

Stateless: nothing is stored, every response says `store: false`, and
`previous_response_id` / `conversation` / `background` are 400s saying so (send the whole
conversation). A reply cut by `max_output_tokens` is `status: "incomplete"`,
`incomplete_details.reason: "max_output_tokens"` (a stream ends with `response.incomplete`).
A reply that calls tools is one `function_call` output item per call (`call_id`, `name`,
`arguments`). Each stream event carries its `type` (also the SSE `event:` line) and a
`sequence_number` from 0.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidRequest
from core.tokens import TokenTable
from serving.chat import check_kwargs
from serving.engine.limits import check_text, default_max_tokens
from serving.engine.requests import Event
from serving.engine.sampling import MAX_LOGPROBS
from serving.http.chat_completions import chat_logprobs
from serving.http.completions import Gathered, Meta, _show, check_body, controls, field_of
from serving.http.responses_input import message, parse_input, read_response_tools, response_format_of
from serving.tools import CallStream, Tools

LOGPROBS_INCLUDE = "message.output_text.logprobs"
# Stateful or hosted features a stateless text model cannot honour: refused, never ignored.
STATEFUL = {"previous_response_id": "it keeps no responses", "conversation": "it keeps no conversations",
            "background": "it runs no background responses"}


@dataclass(frozen=True)
class ResponseRequest:
    messages: list[dict]          # chat's messages: what the template renders
    kwargs: dict                  # chat_template_kwargs
    fields: dict                  # SamplingParams' fields
    stream: bool = False
    echo: dict = field(default_factory=dict)   # what the response object repeats of the request
    tools: Tools | None = None
    response_format: dict | None = None        # chat's shape of text.format


def _logprobs(body: dict) -> int | None:
    include = body.get("include")
    if include is not None and not (isinstance(include, list) and all(isinstance(s, str) for s in include)):
        raise InvalidRequest(f"include must be a list of strings, got {_show(include)}", param="include")
    top = field_of(body, "top_logprobs", int, None)
    if top is not None and not 0 <= top <= MAX_LOGPROBS:
        raise InvalidRequest(f"top_logprobs must be between 0 and {MAX_LOGPROBS}, got {top}", param="top_logprobs")
    return (top or 0) if top is not None or LOGPROBS_INCLUDE in (include or ()) else None


def parse_response(body: Any, max_new_tokens: int) -> ResponseRequest:
    body = check_body(body)
    for name, why in STATEFUL.items():
        if body.get(name):
            raise InvalidRequest(f"{name} is not supported: this server is stateless (store false) and {why}; "
                                 "send the whole conversation in input", param=name)
    response_format, echo_format = response_format_of(body)
    tools = read_response_tools(body)
    instructions = field_of(body, "instructions", str, None)
    messages = parse_input(body.get("input"))
    if instructions is not None and instructions.strip():
        messages.insert(0, message(instructions, "system", "instructions"))
    limit = max_new_tokens
    max_tokens = field_of(body, "max_output_tokens", int, default_max_tokens("chat", 1, limit))
    if not 1 <= max_tokens <= limit:
        raise InvalidRequest(f"max_output_tokens must be between 1 and {limit}, got {max_tokens}",
                             param="max_output_tokens")
    truncation = body.get("truncation") or "disabled"
    if truncation not in ("auto", "disabled"):
        raise InvalidRequest(f"truncation must be \"auto\" or \"disabled\", got {_show(truncation)}",
                             param="truncation")
    fields = controls({k: v for k, v in body.items() if k not in ("n", "truncate_prompt_tokens")})
    fields.update(max_tokens=max_tokens, logprobs=_logprobs(body), truncate_prompt_tokens=-1 if truncation == "auto" else None)
    echo = {"instructions": instructions, "max_output_tokens": field_of(body, "max_output_tokens", int, None),
            "temperature": fields["temperature"], "top_p": fields["top_p"], "truncation": truncation,
            "top_logprobs": field_of(body, "top_logprobs", int, None),
            "metadata": field_of(body, "metadata", dict, {}), "user": field_of(body, "user", str, None),
            "text": {"format": echo_format}, "tools": body["tools"] if tools else [],
            "tool_choice": body.get("tool_choice") or "auto", "parallel_tool_calls": tools is None or tools.parallel}
    for name, value in (("user", echo["user"] or ""), *(("metadata", str(x)) for kv in echo["metadata"].items()
                                                        for x in kv)):
        check_text(value, name)   # echoed back: a lone surrogate cannot be written as UTF-8
    return ResponseRequest(messages, check_kwargs(body.get("chat_template_kwargs")), fields,
                           field_of(body, "stream", bool, False), echo, tools, response_format)


def response_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
            "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


class ResponseShape:
    """One response's output items and their typed events, numbered. Without tools the reply
    is one message item, opened with the stream; with tools, the first text decides
    (serving/tools.py's CallStream): a message item opened then, or a function_call item
    per call line, each whole (added, its arguments in one delta, done)."""

    def __init__(self, meta: Meta, r: ResponseRequest, tokens: TokenTable, prompt_tokens: int):
        self.meta, self.r, self.tokens, self.prompt_tokens = meta, r, tokens, prompt_tokens
        self.calls = CallStream(r.tools.choice) if r.tools else None
        self.item_id = "msg_" + uuid.uuid4().hex
        self.seq = 0
        self.output: list[dict | None] = []   # items in order; the message's is filled at the end
        self.message_at: int | None = None     # its output_index, once opened
        self.text: list[str] = []
        self.logprobs: list = []
        self.finish, self.completion_tokens, self.cached_tokens = "", 0, 0

    def event(self, kind: str, **fields) -> dict:
        out = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return out

    def _lps(self, entries) -> list[dict]:
        return chat_logprobs(entries, self.tokens)["content"] if self.r.fields["logprobs"] is not None else []

    def _part(self) -> dict:
        return {"type": "output_text", "text": "".join(self.text), "annotations": [],
                "logprobs": self._lps(self.logprobs)}

    def _message(self, status: str) -> dict:
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant",
                "content": [self._part()] if status != "in_progress" else []}

    def _status(self) -> str:
        return "incomplete" if self.finish == "length" else "completed"

    def response(self, status: str, usage: dict | None) -> dict:
        m, done = self.meta, status != "in_progress"
        return {"id": m.rid, "object": "response", "created_at": m.created, "status": status,
                "completed_at": int(time.time()) if done else None, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "model": m.model, "output": [o for o in self.output if o] if done else [],
                "previous_response_id": None, "reasoning": None, "store": False, "usage": usage, **self.r.echo}

    # ---- output items --------------------------------------------------------------------------
    def _open_message(self) -> list[dict]:
        self.message_at = len(self.output)
        self.output.append(None)
        at = {"output_index": self.message_at}
        return [self.event("response.output_item.added", item=self._message("in_progress"), **at),
                self.event("response.content_part.added", item_id=self.item_id, content_index=0,
                           part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}, **at)]

    def _text(self, text: str, entries) -> list[dict]:
        out = self._open_message() if self.message_at is None else []
        self.text.append(text)
        self.logprobs.extend(entries or [])
        return out + [self.event("response.output_text.delta", item_id=self.item_id, output_index=self.message_at,
                                 content_index=0, delta=text, logprobs=self._lps(entries))]

    def _call(self, call: dict) -> list[dict]:
        fn, at = call["function"], {"output_index": len(self.output)}
        item = {"type": "function_call", "id": "fc_" + uuid.uuid4().hex, "call_id": call["id"], "name": fn["name"],
                "arguments": fn["arguments"], "status": "completed"}
        self.output.append(item)
        return [self.event("response.output_item.added", item={**item, "arguments": "", "status": "in_progress"}, **at),
                self.event("response.function_call_arguments.delta", item_id=item["id"], delta=fn["arguments"], **at),
                self.event("response.function_call_arguments.done", item_id=item["id"], name=fn["name"],
                           arguments=fn["arguments"], **at),
                self.event("response.output_item.done", item=item, **at)]

    # ---- a stream ----------------------------------------------------------------------------
    def opening(self) -> list[dict]:
        return [self.event("response.created", response=self.response("in_progress", None)),
                self.event("response.in_progress", response=self.response("in_progress", None)),
                *(self._open_message() if self.calls is None else [])]

    def chunk(self, ev: Event) -> list[dict]:
        if ev.finish_reason:
            self.finish, self.completion_tokens, self.cached_tokens = ev.finish_reason, ev.completion_tokens, ev.cached_tokens
        if self.calls is None:
            return self._text(ev.text, ev.logprobs) if ev.text or ev.logprobs else []
        deltas = self.calls.feed(ev.text)
        if ev.finish_reason:
            last, self.finish = self.calls.finish(ev.finish_reason)
            deltas += last
        out = []
        for d in deltas:
            out += self._text(d["content"], None) if "content" in d else self._call(d["tool_calls"][0])
        return out

    def closing(self) -> list[dict]:
        status = self._status()
        out = self._open_message() if self.message_at is None and not self.output else []
        if self.message_at is not None:
            at = {"item_id": self.item_id, "output_index": self.message_at, "content_index": 0}
            self.output[self.message_at] = self._message(status)
            out += [self.event("response.output_text.done", text="".join(self.text), logprobs=self._lps(self.logprobs),
                               **at),
                    self.event("response.content_part.done", part=self._part(), **at),
                    self.event("response.output_item.done", output_index=self.message_at, item=self._message(status))]
        usage = response_usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)
        return out + [self.event(f"response.{status}", response=self.response(status, usage))]

    # ---- at once -----------------------------------------------------------------------------
    def whole(self, choices: dict[int, Gathered], u: dict) -> dict:
        g = choices[0]
        self.opening()
        self.chunk(Event("".join(g.text), [], g.finish_reason, u["prompt_tokens"], g.completion_tokens,
                         g.logprobs if self.r.fields["logprobs"] is not None else None,
                         cached_tokens=u["prompt_tokens_details"]["cached_tokens"]))
        return self.closing()[-1]["response"]
