"""A gRPC chat's messages, tools and tool calls: the protobuf in the shapes serving/chat.py and
serving/tools.py read, and the calls a reply makes back as protobuf.

    messages = messages_of(request.messages)        # checked as HTTP's (serving/chat.py)
    tools = tools_of(request)                       # serving/tools.py's Tools, or None
    calls = Calls(tools, n)                          # per choice: streamed text -> (text, ToolCalls)
    text, pb_calls = calls.feed(ev.index, ev.text)
    text, pb_calls, finish = calls.finish(ev.index, ev.finish_reason)

Why here: the proto spells tools as OpenAI does (`tools[i].function.{name, description,
parameters}`, a call's `function.{name, arguments}`), so the one reader of tools
(serving/tools.py's `read_tools`) and of messages (serving/chat.py's `check_messages`)
checks both doors' requests and names the same fields in their errors; only what protobuf
spells differently is translated here (a schema as JSON text, tool_choice's mode or function).
"""
from __future__ import annotations

import json

from core.errors import InvalidRequest
from serving.chat import check_messages
from serving.grpc.proto import pb
from serving.tools import CHOICES, CallStream, Tools, read_tools


def messages_of(messages) -> list[dict]:
    """ChatMessages as the template reads them (checked as HTTP's are)."""
    out = []
    for m in messages:
        d: dict = {"role": m.role, "content": m.content}
        if m.name:
            d["name"] = m.name
        if m.tool_calls:
            d["tool_calls"] = [{"id": c.id, "type": "function",
                                "function": {"name": c.function.name, "arguments": c.function.arguments}}
                               for c in m.tool_calls]
        if m.role == "tool":
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return check_messages(out)


def tools_of(r: pb.GenerateRequest) -> Tools | None:
    """The request's tools and tool_choice as serving/tools.py reads them (None: no tools)."""
    specs = []
    for i, t in enumerate(r.tools):
        f = t.function
        spec = {"name": f.name, "description": f.description}
        if f.parameters:
            try:
                spec["parameters"] = json.loads(f.parameters)
            except ValueError:
                raise InvalidRequest(f"tools[{i}].function.parameters must be a JSON Schema as JSON text",
                                     param=f"tools[{i}].function.parameters") from None
        specs.append({"type": "function", "function": spec})
    choice = None
    if r.HasField("tool_choice"):
        mode, function = r.tool_choice.mode, r.tool_choice.function
        if function:
            if mode:
                raise InvalidRequest("tool_choice: set mode or function, not both", param="tool_choice")
            choice = {"type": "function", "function": {"name": function}}
        elif mode:
            if mode not in CHOICES:
                raise InvalidRequest(f"tool_choice.mode must be {', '.join(CHOICES)} (or set tool_choice.function), "
                                     f"got {mode[:40]!r}", param="tool_choice.mode")
            choice = mode
    parallel = r.parallel_tool_calls if r.HasField("parallel_tool_calls") else None
    return read_tools(specs or None, choice, parallel)


def pb_calls(deltas: list[dict]) -> tuple[str, list[pb.ToolCall]]:
    """CallStream's deltas as (the text to send, the calls)."""
    text, calls = "", []
    for d in deltas:
        text += d.get("content", "")
        for c in d.get("tool_calls", []):
            fn = c["function"]
            calls.append(pb.ToolCall(id=c["id"], index=c["index"],
                                     function=pb.FunctionCall(name=fn["name"], arguments=fn["arguments"])))
    return text, calls


class Calls:
    """Each choice's reply read as serving/tools.py's CallStream reads HTTP's: text as it
    comes, or, once the reply is a call, each call whole when its line ends."""

    def __init__(self, tools: Tools | None, n: int):
        self.streams = {i: CallStream(tools.choice) for i in range(n)} if tools else None

    def feed(self, index: int, text: str) -> tuple[str, list[pb.ToolCall]]:
        if self.streams is None:
            return text, []
        return pb_calls(self.streams[index].feed(text))

    def finish(self, index: int, text: str, reason: str) -> tuple[str, list[pb.ToolCall], str]:
        """A choice's last text: (text, calls, its finish_reason: "tool_calls" when it called)."""
        if self.streams is None:
            return text, [], reason
        stream = self.streams[index]
        deltas = stream.feed(text)
        last, reason = stream.finish(reason)
        return (*pb_calls(deltas + last), reason)
