"""Tool calls on chat: OpenAI's `tools` and `tool_choice` read and checked, the grammar that
makes the model call them, and the calls read back out of its reply.

    tools = read_tools(body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls"))
    tools.grammar             # llguidance's grammar; None when the model writes free text ("none")
    tools.specs               # what the chat template gets as `tools`
    read_calls(text)          # [{"id", "type", "function": {"name", "arguments"}}], or None: content
    stream = CallStream(tools.choice)   # a streamed reply's text -> content or tool-call deltas

The model has no tool-calling format of its own, so its chat template gives it one
(training/chat_form.py; core/chat.py's TOOL_CALL holds the literal parts): a call is a line
of its own, `[call get_weather {"city": "Paris"}]`, a stage direction in the play-script
form, and a tool's answer is another, `[get_weather answers: ...]`. `required` and a named
function are enforced by constrained decoding (serving/engine/grammar.py): the reply is one
or more such lines whose arguments parse against the function's schema. `auto` lets the
model choose: the grammar is "a call, or text that does not begin with `[`" (so a reply can
not open with a stage direction). `none` renders the tools but adds no grammar.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import llguidance

from core.chat import TOOL_CALL
from core.errors import InvalidRequest
from serving.chat import TOOL_NAME as NAME
from serving.structured import JSON_OPTIONS, json_grammar

MAX_TOOLS, MAX_DESCRIPTION_CHARS = 64, 1024
OPEN, CLOSE = TOOL_CALL
CALL_LINE = re.compile(rf"{re.escape(OPEN)}({NAME.pattern}) (.*){re.escape(CLOSE)}")
CHOICES = ("none", "auto", "required")


@dataclass(frozen=True)
class Tools:
    specs: list[dict]          # [{"type": "function", "function": {name, description, parameters}}]
    choice: str                # none, auto, required, or "function" (one named: `name`)
    name: str = ""
    parallel: bool = True

    @cached_property
    def grammar(self) -> str | None:
        if self.choice == "none":
            return None
        fns = [s["function"] for s in self.specs if self.choice != "function" or s["function"]["name"] == self.name]
        rules = [f'f{i}: {json.dumps(f["name"] + " ")} %json {json.dumps(_compact(f["parameters"]))}'
                 for i, f in enumerate(fns)]
        call = f'call: {json.dumps(OPEN)} ({" | ".join(f"f{i}" for i in range(len(fns)))}) {json.dumps(CLOSE)}'
        calls = 'calls: call ("\\n" call)*' if self.parallel and self.choice != "function" else "calls: call"
        start = "start: calls | TEXT?\nTEXT: /[^\\[](.|\\n)*/" if self.choice == "auto" else "start: calls"
        return llguidance.LLMatcher.grammar_from_lark("\n".join([start, calls, call, *rules]) + "\n")

    def checks(self) -> list[tuple[str, str]]:
        """(grammar, param) for each function's parameters: what the Shaper validates, so an
        unsupported schema keyword is a 400 naming that tool's field."""
        return [(json_grammar(s["function"]["parameters"], f"tools[{i}].function.parameters"),
                 f"tools[{i}].function.parameters") for i, s in enumerate(self.specs)]


def _compact(schema: dict) -> dict:
    return {**schema, "x-guidance": {**JSON_OPTIONS, **schema.get("x-guidance", {})}}


def _tool(t: Any, i: int) -> dict:
    where = f"tools[{i}]"
    if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(t.get("function"), dict):
        raise InvalidRequest(f"{where} must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}", param=where)
    f = t["function"]
    name = f.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidRequest(f"{where}.function.name must be 1 to 64 letters, digits, _ or -, got {str(name)[:40]!r}",
                             param=f"{where}.function.name")
    description = f.get("description") or ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidRequest(f"{where}.function.description must be a string of at most {MAX_DESCRIPTION_CHARS} "
                             "characters", param=f"{where}.function.description")
    params = f.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise InvalidRequest(f"{where}.function.parameters must be a JSON Schema object",
                             param=f"{where}.function.parameters")
    return {"type": "function", "function": {"name": name, "description": description.strip(), "parameters": params}}


def read_tools(tools: Any, tool_choice: Any = None, parallel: Any = None) -> Tools | None:
    """The request's tools and how the model must use them; None when it has none."""
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest("parallel_tool_calls must be true or false", param="parallel_tool_calls")
    if tools is None or tools == []:
        if tool_choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice needs tools: the request has none", param="tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"tools must be a list of at most {MAX_TOOLS} functions", param="tools")
    specs = [_tool(t, i) for i, t in enumerate(tools)]
    names = [s["function"]["name"] for s in specs]
    if len(set(names)) < len(names):
        raise InvalidRequest("tools must have different names", param="tools")
    if tool_choice is None or tool_choice in CHOICES:
        return Tools(specs, tool_choice or "auto", parallel=parallel is not False)
    named = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = named.get("name") if isinstance(named, dict) else None
    if not isinstance(tool_choice, dict) or tool_choice.get("type", "function") != "function" or not isinstance(name, str):
        raise InvalidRequest("tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": "
                             "{\"name\": ...}}", param="tool_choice")
    if name not in names:
        raise InvalidRequest(f"tool_choice names {name[:64]!r}, which is not among the tools "
                             f"({', '.join(names)[:200]})", param="tool_choice")
    return Tools(specs, "function", name, parallel=False)


def call_id() -> str:
    return "call_" + secrets.token_hex(12)


def read_calls(text: str) -> list[dict] | None:
    """The tool calls a whole reply makes, OpenAI's shape; None when the reply is text (or a
    call that max_tokens cut)."""
    if not text.startswith(OPEN):
        return None
    calls = []
    for line in text.split("\n"):
        m = CALL_LINE.fullmatch(line)
        if not m:
            return None
        try:
            json.loads(m.group(2))
        except ValueError:
            return None
        calls.append({"id": call_id(), "type": "function", "function": {"name": m.group(1), "arguments": m.group(2)}})
    return calls


class CallStream:
    """One streamed choice's text as chat deltas: content as it comes, or, once the reply is
    a call (it begins with `[`: under `auto` text may not), each call whole when its line ends."""

    def __init__(self, choice: str):
        self.calls = choice in ("required", "function")
        self.decided = choice != "auto"
        self.buffer, self.count = "", 0

    def feed(self, text: str) -> list[dict]:
        if not self.decided and text:
            self.decided, self.calls = True, text.startswith(OPEN[0])
        if not self.calls:
            return [{"content": text}] if text else []
        self.buffer += text
        out = []
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            out += self._call(line)
        return out

    def finish(self, reason: str) -> tuple[list[dict], str]:
        """The last deltas and the choice's finish_reason ("tool_calls" when it called)."""
        if not self.calls:
            return [], reason
        out = self._call(self.buffer) if reason == "stop" else ([{"content": self.buffer}] if self.buffer else [])
        return out, "tool_calls" if reason == "stop" and self.count else reason

    def _call(self, line: str) -> list[dict]:
        calls = read_calls(line)
        if not calls:
            return [{"content": line}] if line else []
        self.count += 1
        return [{"tool_calls": [{"index": self.count - 1, **calls[0]}]}]
