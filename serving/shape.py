"""One request shaping for both front doors: a completion or a chat becomes the text the
model continues and its SamplingParams.

    shaper = Shaper(server.chat, max_new_tokens=1024, grammars=Grammars(...))   # the server holds one
    s = shaper.completion("ROMEO:", fields, kind="completions", response_format={"type": "json_object"})
    s = shaper.chat(messages, kwargs, fields, response_format=None, tools=read_tools(...))
    req = server.submit(s.prompt, s.params, param=s.param)

`fields` are SamplingParams' fields as a door read them (types are the door's concern:
HTTP's JSON in serving/http/completions.py, gRPC's protobuf in serving/grpc/api.py), with
`max_tokens` None when the client left it out. Why here: each door used to do this itself
(its own default max_tokens, its own merge of the chat's stops with its own message, its
own rendering), and the two drifted. Structured output enters here too: a
`response_format` (serving/structured.py) or the tools a reply must call
(serving/tools.py) become the grammar in `SamplingParams.grammar`, checked against the
model's tokenizer so what llguidance cannot run is a 400 naming the field. The limits stay
in serving/engine/limits.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidRequest
from serving.chat import Chat
from serving.engine.grammar import Grammars
from serving.engine.limits import default_max_tokens, merge_stops
from serving.engine.sampling import SamplingParams
from serving.structured import response_grammar
from serving.tools import Tools


@dataclass(frozen=True)
class Shaped:
    prompt: str                 # the text the model continues
    params: SamplingParams
    param: str = "prompt"       # the field the prompt came from ("messages": a rendered chat)


class Shaper:
    def __init__(self, chat: Chat, max_new_tokens: int, grammars: Grammars):
        self.chat_template, self.max_new_tokens, self.grammars = chat, max_new_tokens, grammars

    def params(self, fields: dict, kind: str) -> SamplingParams:
        """SamplingParams from a door's fields; an unset max_tokens takes `kind`'s default."""
        fields = dict(fields)
        if fields.get("max_tokens") is None:
            fields["max_tokens"] = default_max_tokens(kind, fields.get("n", 1), self.max_new_tokens)
        return SamplingParams(**fields)

    def grammar(self, response_format: Any, param: str = "response_format") -> str | None:
        """The grammar a response_format asks for, checked against the tokenizer."""
        grammar = response_grammar(response_format, param)
        if grammar is not None:
            self.grammars.check(grammar, param)
        return grammar

    def completion(self, prompt: str, fields: dict, kind: str = "completions", response_format: Any = None,
                   format_param: str = "response_format") -> Shaped:
        params = self.params(fields, kind)
        return Shaped(prompt, dataclasses.replace(params, grammar=self.grammar(response_format, format_param)))

    def chat(self, messages: list[dict], kwargs: dict, fields: dict, response_format: Any = None,
             tools: Tools | None = None, format_param: str = "response_format", param: str = "messages") -> Shaped:
        """A checked conversation (serving/chat.py's check_messages) rendered through the
        model's template, with the tools at hand. The reply ends at the template's stops,
        unless a grammar decides where it ends (a response_format, a call that is required).
        `param` names the field the conversation came from (/v1/responses' is "input")."""
        params = self.params(fields, "chat")
        grammar = self.grammar(response_format, format_param)
        if tools is not None and tools.grammar is not None:
            if grammar is not None:
                raise InvalidRequest("response_format and tools cannot both shape a reply: send tool_choice "
                                     "\"none\", or leave response_format out", param=format_param)
            for g, param in tools.checks():
                self.grammars.check(g, param)
            grammar = tools.grammar
            self.grammars.check(grammar, "tools")
        if (tools is not None or any(m["role"] == "tool" or "tool_calls" in m for m in messages)) \
                and "tool_calls" not in self.chat_template.source:
            raise InvalidRequest("this model's chat template predates tool calls; re-run `python -m export` to "
                                 "get one that renders them", param="tools" if tools is not None else param)
        free = grammar is None or (tools is not None and tools.choice == "auto" and grammar == tools.grammar)
        stop = merge_stops(params.stop, self.chat_template.stop) if free else params.stop
        kwargs = {**kwargs, "tools": tools.specs} if tools is not None else kwargs
        return Shaped(self.chat_template.render(messages, kwargs, param=param),
                      dataclasses.replace(params, stop=stop, grammar=grammar), param)
