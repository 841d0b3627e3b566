"""What /v1/responses reads that chat spells differently: input items, function tools and
text.format, turned into chat's shapes (the messages the template renders, serving/tools.py's
Tools, serving/structured.py's response_format), each refusal naming the Responses field.

    messages = parse_input(body["input"])        # messages, function_call and function_call_output items
    tools = read_response_tools(body)            # Tools | None, from the flat {"type": "function", "name", ...}
    fmt = response_format_of(body)               # text.format -> chat's response_format (or None)

Why apart from responses.py: the Responses API flattens what chat nests (a tool is
`{"type": "function", "name", "parameters"}`, not under `function`; `text.format` carries
`schema` itself, not under `json_schema`; a call is an item with a `call_id`), and its
clients expect errors to name its own fields (`input[2].call_id`, `tools[0].parameters`).
"""
from __future__ import annotations

import json
from typing import Any

from core.errors import InvalidRequest
from serving.chat import TOOL_NAME
from serving.engine.limits import check_text
from serving.http.completions import _show, field_of
from serving.structured import json_grammar
from serving.tools import Tools, read_tools

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
MAX_CALL_ID_CHARS = 64


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


def message(text: str, role: str, where: str) -> dict:
    if not text.strip():
        raise InvalidRequest(f"{where} is empty; give every message some text", param=where)
    check_text(text, where)
    return {"role": role, "content": text}


def _string(item: dict, key: str, where: str, limit: int | None = None) -> str:
    v = item.get(key)
    if not isinstance(v, str) or not v or (limit and len(v) > limit):
        raise InvalidRequest(f"{where}.{key} must be a non-empty string" + (f" of at most {limit} characters"
                                                                          if limit else ""), param=f"{where}.{key}")
    check_text(v, f"{where}.{key}")
    return v


def _call(item: dict, where: str) -> dict:
    """A function_call item as one of an assistant message's tool_calls."""
    name = _string(item, "name", where)
    if not TOOL_NAME.fullmatch(name):
        raise InvalidRequest(f"{where}.name must be 1 to 64 letters, digits, _ or -", param=f"{where}.name")
    arguments = _string(item, "arguments", where)
    try:   # a call is one line of the play (core/chat.py TOOL_CALL): compact JSON
        arguments = json.dumps(json.loads(arguments), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        raise InvalidRequest(f"{where}.arguments must be JSON", param=f"{where}.arguments") from None
    return {"id": _string(item, "call_id", where, MAX_CALL_ID_CHARS), "type": "function",
            "function": {"name": name, "arguments": arguments}}


def parse_input(value: Any) -> list[dict]:
    """`input` as chat messages: a string is one user message; items are messages, earlier
    function calls (consecutive ones: one assistant message) and their outputs."""
    if isinstance(value, str):
        return [message(value, "user", "input")]
    if not isinstance(value, list) or not value:
        raise InvalidRequest("input must be a string or a non-empty list of items", param="input")
    out, called = [], {}
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an item: a message {{role, content}}, a function_call or a "
                                 "function_call_output", param=where)
        kind = item.get("type", "message")
        if kind == "function_call":
            call = _call(item, where)
            if out and out[-1].get("tool_calls") and not out[-1]["content"]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
            called[call["id"]] = call["function"]["name"]
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if call_id not in called:
                raise InvalidRequest(f"{where}.call_id must be the call_id of a function_call earlier in input, "
                                     f"got {_show(call_id)}", param=f"{where}.call_id")
            output = item.get("output")
            text = output if isinstance(output, str) else _content(output, f"{where}.output")
            out.append({**message(text, "tool", f"{where}.output"), "tool_call_id": call_id, "name": called[call_id]})
        elif kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise InvalidRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {_show(role)}",
                                     param=f"{where}.role")
            out.append(message(_content(item.get("content"), f"{where}.content"), ROLES[role], f"{where}.content"))
        else:
            raise InvalidRequest(f"{where}.type {_show(kind)} is not supported: this server reads message, "
                                 "function_call and function_call_output items", param=f"{where}.type")
    return out


def read_response_tools(body: dict) -> Tools | None:
    """Function tools in the Responses API's flat shape, as chat's Tools."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if isinstance(tools, list):
        nested = []
        for i, t in enumerate(tools):
            where = f"tools[{i}]"
            if not isinstance(t, dict) or t.get("type") != "function":
                raise InvalidRequest(f"{where} must be a function tool {{\"type\": \"function\", \"name\": ..., "
                                     "\"parameters\": {...}}: this server runs no hosted tools", param=f"{where}.type")
            name = t.get("name")
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                raise InvalidRequest(f"{where}.name must be 1 to 64 letters, digits, _ or -, got {_show(name)}",
                                     param=f"{where}.name")
            if t.get("parameters") is not None:
                json_grammar(t["parameters"], f"{where}.parameters")   # refused here, under its own name
            nested.append({"type": "function", "function": {k: t.get(k) for k in ("name", "description", "parameters")
                                                             if t.get(k) is not None}})
        tools = nested
    if isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise InvalidRequest("tool_choice must name its function: {\"type\": \"function\", \"name\": ...}",
                                 param="tool_choice")
        choice = {"type": "function", "function": {"name": choice["name"]}}
    return read_tools(tools, choice, body.get("parallel_tool_calls"))


def response_format_of(body: dict) -> tuple[dict | None, dict]:
    """(chat's response_format or None, the text.format to echo) from `text.format`."""
    fmt = field_of(field_of(body, "text", dict, {}), "format", dict, None)
    if fmt is None or fmt.get("type") == "text":
        return None, {"type": "text"}
    if fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        json_grammar(schema, "text.format.schema")   # refused here, under its own name
        name = fmt.get("name", "response")
        if not isinstance(name, str):
            raise InvalidRequest("text.format.name must be a string", param="text.format.name")
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}, \
            {"type": "json_schema", "name": name, "schema": schema, "strict": fmt.get("strict") is not False}
    return fmt, fmt    # json_object and the extensions (regex, choice, grammar) are chat's own shape
