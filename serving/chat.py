"""Chat: check a conversation and render it through the model's chat template.

    chat = Chat(artifact.chat)                               # core.chat.ChatTemplate, compiled once
    messages = check_messages(json_body["messages"])         # InvalidRequest naming the field
    prompt = chat.render(messages, {"assistant_name": "Juliet"})   # the text the model continues
    chat.stop                                                # where a reply ends (added to the request's)

The template is Jinja2 in Hugging Face's convention (`messages`, `add_generation_prompt`,
the special tokens, `tools`, and any `chat_template_kwargs`: here `user_name` and
`assistant_name`; messages may carry OpenAI's `tool_calls` and `tool` answers),
rendered in an environment with the semantics transformers' `apply_chat_template` uses (a
sandbox that cannot change its inputs, `trim_blocks`, `lstrip_blocks`, loop controls, a
`tojson` that leaves HTML alone, `raise_exception`, `strftime_now`), so the server and
transformers render the same string from the same template (tests/test_chat.py checks).
The Shaper (serving/shape.py) renders for both front doors before `Server.submit`; the
engine only ever sees text.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.chat import ChatTemplate
from core.errors import InvalidRequest, UserError
from core.tokens import EOS
from serving.engine.limits import check_text

ROLES = ("system", "user", "assistant", "tool")
MAX_NAME_CHARS = 64
MAX_TOOL_CALLS = 16
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")   # OpenAI's rule for function names
MAX_KWARGS, MAX_KWARG_CHARS = 8, 256


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


def environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env


def compile_template(source: str) -> jinja2.Template:
    """Compile once; a template that does not parse is the operator's error, said in one line."""
    try:
        return environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"the artifact's chat template is not valid Jinja2 (line {e.lineno}: {e.message}); "
                        "re-run the export with a valid --chat-template") from None


class Chat:
    """A model's chat template, compiled, with its default stop strings."""

    def __init__(self, chat: ChatTemplate | None):
        self.source = chat.template if chat else ""
        self.stop = chat.stop if chat else ()
        self.form = chat.form if chat else {}
        self._template = compile_template(self.source) if chat else None

    def render(self, messages: list[dict], kwargs: dict | None = None, add_generation_prompt: bool = True,
               param: str = "messages") -> str:
        """`param`: the request field the messages came from (/v1/responses' is "input")."""
        if self._template is None:
            raise InvalidRequest("this model has no chat template: its artifact predates chat; re-run "
                                 "`python -m export` (or pass --chat-template FILE)", param=param)
        try:
            return self._template.render(**(kwargs or {}), messages=messages,
                                         add_generation_prompt=add_generation_prompt,
                                         bos_token=EOS, eos_token=EOS, pad_token=EOS)
        except jinja2.TemplateError as e:   # raise_exception(...) in the template, or a sandbox refusal
            raise InvalidRequest(f"the chat template refused these messages: {e}", param=param) from None


def _text(value: Any, param: str) -> str:
    """Message content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{param} must be a string or a non-empty list of text parts", param=param)
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{where} must be {{\"type\": \"text\", \"text\": \"...\"}}: this model reads "
                                 "text only", param=where)
    return "\n".join(part["text"] for part in value)


def check_messages(messages: Any) -> list[dict]:
    """The conversation as plain dicts {role, content, name?}, each field checked (the message
    names the field and its limit). Content lists keep their shape: the template reads them.
    An assistant message may carry OpenAI's `tool_calls` (its content then may be empty); a
    `tool` message answers one of them by `tool_call_id`, and gets that function's `name`."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list of {role, content} objects", param="messages")
    out, called = [], {}
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidRequest(f"{where} must be an object with role and content", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {str(role)[:40]!r}",
                                 param=f"{where}.role")
        calls = _tool_calls(m.get("tool_calls"), where) if role == "assistant" else []
        content = m.get("content")
        if calls and not content:
            content = ""
        else:
            text = _text(content, f"{where}.content")
            if not text.strip():
                raise InvalidRequest(f"{where}.content is empty; give every message some text",
                                     param=f"{where}.content")
            check_text(text, f"{where}.content")
        msg = {"role": role, "content": content}
        if calls:
            msg["tool_calls"] = calls
            called.update((c["id"], c["function"]["name"]) for c in calls)
        if role == "tool":
            call = m.get("tool_call_id")
            if call not in called:
                raise InvalidRequest(f"{where}.tool_call_id must be the id of a tool call made earlier in messages, "
                                     f"got {str(call)[:64]!r}", param=f"{where}.tool_call_id")
            msg.update(tool_call_id=call, name=called[call])
            out.append(msg)
            continue
        name = m.get("name")
        if name is not None:
            if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME_CHARS or \
                    any(c in name for c in "\r\n"):
                raise InvalidRequest(f"{where}.name must be 1 to {MAX_NAME_CHARS} characters on one line",
                                     param=f"{where}.name")
            check_text(name, f"{where}.name")
            msg["name"] = name.strip()
        out.append(msg)
    return out


def _tool_calls(calls: Any, where: str) -> list[dict]:
    """An assistant message's earlier tool calls, OpenAI's shape: [{id, type, function: {name,
    arguments (a JSON string)}}], the arguments parsed (the template writes them with tojson,
    as transformers' and llama.cpp's callers pass them)."""
    if calls is None:
        return []
    if not isinstance(calls, list) or len(calls) > MAX_TOOL_CALLS:
        raise InvalidRequest(f"{where}.tool_calls must be a list of at most {MAX_TOOL_CALLS} calls",
                             param=f"{where}.tool_calls")
    out = []
    for j, c in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(c.get("id"), str) or not isinstance(fn.get("name"), str) \
                or not TOOL_NAME.fullmatch(fn["name"]) or not isinstance(fn.get("arguments"), str):
            raise InvalidRequest(f"{at} must be {{\"id\": ..., \"type\": \"function\", \"function\": {{\"name\": ..., "
                                 "\"arguments\": \"{...}\"}}}}", param=at)
        try:   # the template renders them with tojson, as transformers and llama.cpp pass them
            arguments = json.loads(fn["arguments"])
        except ValueError:
            raise InvalidRequest(f"{at}.function.arguments must be JSON", param=f"{at}.function.arguments") from None
        check_text(fn["arguments"], f"{at}.function.arguments")
        out.append({"id": c["id"], "type": "function", "function": {"name": fn["name"], "arguments": arguments}})
    return out


def check_kwargs(kwargs: Any) -> dict:
    """chat_template_kwargs (vLLM's name): a few string values, e.g. user_name, assistant_name."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or len(kwargs) > MAX_KWARGS:
        raise InvalidRequest(f"chat_template_kwargs must be an object of at most {MAX_KWARGS} strings",
                             param="chat_template_kwargs")
    for k, v in kwargs.items():
        if not k.isidentifier() or k.startswith("_") or not isinstance(v, str) or len(v) > MAX_KWARG_CHARS \
                or any(c in v for c in "\r\n"):
            raise InvalidRequest(f"chat_template_kwargs.{k[:40]} must be a one-line string of at most "
                                 f"{MAX_KWARG_CHARS} characters, under a plain name", param="chat_template_kwargs")
        check_text(k, "chat_template_kwargs")
        check_text(v, "chat_template_kwargs")
    return {k: v.strip() for k, v in kwargs.items()}
