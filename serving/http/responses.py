"""OpenAI's /v1/responses in shelley's terms, stateless: read a request, shape the answer and
its typed stream.

    r = parse_response(json_body, max_new_tokens=1024)   # r.messages, r.fields (SamplingParams')
    s = server.shaper.chat(r.messages, r.kwargs, r.fields, param="input")   # as chat's (serving/shape.py)
    shape = ResponseShape(meta, r, tokens, prompt_tokens)
    shape.opening()      # response.created, .in_progress, .output_item.added, .content_part.added
    shape.chunk(event)   # [response.output_text.delta]
    shape.closing()      # .output_text.done, .content_part.done, .output_item.done, .completed
    shape.whole(gathered_choices, usage)                  # the `response` object at once

Why its own door: the openai-agents SDK and LangChain's Responses-only features call
/v1/responses, not chat. It is chat underneath (the same template, stops and engine); what
differs is the envelope. The request: `input` (a string, or items: messages whose content
is a string or `input_text` / `output_text` parts, roles user, assistant, system and
developer, which the template reads as system), `instructions` (a system message first),
`max_output_tokens`, `temperature`, `top_p`, `top_logprobs` or `include:
["message.output_text.logprobs"]`, `truncation` (`auto` keeps the input's end), `stream`,
and chat's extensions (`top_k`, `seed`, `stop`, penalties, `chat_template_kwargs`).

Stateless: nothing is stored, every response says `store: false`, and
`previous_response_id` / `conversation` are 400s saying so (send the whole conversation).
A reply cut by `max_output_tokens` is `status: "incomplete"`, `incomplete_details.reason:
"max_output_tokens"` (and a stream ends with `response.incomplete`). Each stream event
carries its `type` (also as the SSE `event:` line) and a `sequence_number` from 0.
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

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
LOGPROBS_INCLUDE = "message.output_text.logprobs"
# Stateful or hosted features a stateless text model cannot honour: refused, never ignored.
STATEFUL = {"previous_response_id": "it keeps no responses", "conversation": "it keeps no conversations",
            "background": "it runs no background responses"}


@dataclass(frozen=True)
class ResponseRequest:
    messages: list[dict]          # {role, content}: the conversation the template renders
    kwargs: dict                  # chat_template_kwargs
    fields: dict                  # SamplingParams' fields
    stream: bool = False
    echo: dict = field(default_factory=dict)   # what the response object repeats of the request


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or a list of input_text / output_text parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{where} must be a string or a non-empty list of input_text parts", param=where)
    texts = []
    for j, part in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
            kind = part.get("type") if isinstance(part, dict) else None
            raise InvalidRequest(f"{at} must be {{\"type\": \"input_text\", \"text\": \"...\"}}, got type "
                                 f"{_show(kind)}: this model reads text only", param=f"{at}.type")
        if not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{at}.text must be a string", param=f"{at}.text")
        texts.append(part["text"])
    return "\n".join(texts)


def _message(text: str, role: str, where: str) -> dict:
    if not text.strip():
        raise InvalidRequest(f"{where} is empty; give every message some text", param=where)
    check_text(text, where)
    return {"role": role, "content": text}


def parse_input(value: Any) -> list[dict]:
    """`input` as chat messages: a string is one user message; items are messages."""
    if isinstance(value, str):
        return [_message(value, "user", "input")]
    if not isinstance(value, list) or not value:
        raise InvalidRequest("input must be a string or a non-empty list of message items", param="input")
    out = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be a message item {{role, content}}", param=where)
        kind = item.get("type", "message")
        if kind != "message":
            raise InvalidRequest(f"{where}.type {_show(kind)} is not supported: this server reads message "
                                 "items (type \"message\")", param=f"{where}.type")
        role = item.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {_show(role)}",
                                 param=f"{where}.role")
        out.append(_message(_content(item.get("content"), f"{where}.content"), ROLES[role], f"{where}.content"))
    return out


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
    if body.get("tools"):
        raise InvalidRequest("tools are not supported by this server yet", param="tools")
    fmt = field_of(field_of(body, "text", dict, {}), "format", dict, {"type": "text"})
    if fmt.get("type") != "text":
        raise InvalidRequest(f"text.format.type must be \"text\", got {_show(fmt.get('type'))}",
                             param="text.format.type")
    instructions = field_of(body, "instructions", str, None)
    messages = parse_input(body.get("input"))
    if instructions is not None and instructions.strip():
        messages.insert(0, _message(instructions, "system", "instructions"))
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
            "metadata": field_of(body, "metadata", dict, {}), "user": field_of(body, "user", str, None)}
    for name, value in (("user", echo["user"] or ""), *(("metadata", str(x)) for kv in echo["metadata"].items()
                                                        for x in kv)):
        check_text(value, name)   # echoed back: a lone surrogate cannot be written as UTF-8
    return ResponseRequest(messages, check_kwargs(body.get("chat_template_kwargs")), fields,
                           field_of(body, "stream", bool, False), echo)


def response_usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


class ResponseShape:
    """One response's objects: the whole `response`, or its stream of typed events, numbered."""

    def __init__(self, meta: Meta, r: ResponseRequest, tokens: TokenTable, prompt_tokens: int):
        self.meta, self.r, self.tokens, self.prompt_tokens = meta, r, tokens, prompt_tokens
        self.item_id = "msg_" + uuid.uuid4().hex
        self.seq = 0
        self.text: list[str] = []
        self.logprobs: list = []
        self.finish, self.completion_tokens = "", 0

    def event(self, kind: str, **fields) -> dict:
        out = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return out

    def _lps(self, entries) -> list[dict]:
        return chat_logprobs(entries, self.tokens)["content"] if self.r.fields["logprobs"] is not None else []

    def _part(self) -> dict:
        return {"type": "output_text", "text": "".join(self.text), "annotations": [],
                "logprobs": self._lps(self.logprobs)}

    def _item(self, status: str) -> dict:
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant",
                "content": [self._part()] if status != "in_progress" else []}

    def response(self, status: str, usage: dict | None) -> dict:
        m, done = self.meta, status != "in_progress"
        incomplete = status == "incomplete"
        return {"id": m.rid, "object": "response", "created_at": m.created, "status": status,
                "completed_at": int(time.time()) if done else None, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
                "model": m.model, "output": [self._item(status)] if done else [],
                "parallel_tool_calls": True, "previous_response_id": None, "reasoning": None, "store": False,
                "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "usage": usage,
                **self.r.echo}

    def _status(self) -> str:
        return "incomplete" if self.finish == "length" else "completed"

    # ---- a stream ----------------------------------------------------------------------------
    def opening(self) -> list[dict]:
        at = {"output_index": 0}
        return [self.event("response.created", response=self.response("in_progress", None)),
                self.event("response.in_progress", response=self.response("in_progress", None)),
                self.event("response.output_item.added", item=self._item("in_progress"), **at),
                self.event("response.content_part.added", item_id=self.item_id, content_index=0,
                            part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}, **at)]

    def chunk(self, ev: Event) -> list[dict]:
        self.text.append(ev.text)
        self.logprobs.extend(ev.logprobs or [])
        if ev.finish_reason:
            self.finish, self.completion_tokens = ev.finish_reason, ev.completion_tokens
        if not ev.text and not ev.logprobs:
            return []
        return [self.event("response.output_text.delta", item_id=self.item_id, output_index=0, content_index=0,
                            delta=ev.text, logprobs=self._lps(ev.logprobs))]

    def closing(self) -> list[dict]:
        at = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        status = self._status()
        usage = response_usage(self.prompt_tokens, self.completion_tokens)
        return [self.event("response.output_text.done", text="".join(self.text), logprobs=self._lps(self.logprobs),
                            **at),
                self.event("response.content_part.done", part=self._part(), **at),
                self.event("response.output_item.done", output_index=0, item=self._item(status)),
                self.event(f"response.{status}", response=self.response(status, usage))]

    # ---- at once -----------------------------------------------------------------------------
    def whole(self, choices: dict[int, Gathered], u: dict) -> dict:
        g = choices[0]
        self.text, self.logprobs = g.text, g.logprobs
        self.finish, self.completion_tokens = g.finish_reason, g.completion_tokens
        return self.response(self._status(), response_usage(u["prompt_tokens"], u["completion_tokens"]))
