"""One request shaping for both front doors: a completion or a chat becomes the text the
model continues and its SamplingParams.

    shaper = Shaper(server.chat, max_new_tokens=1024)           # the server holds one
    s = shaper.completion("ROMEO:", fields, kind="completions")  # kind picks the default max_tokens
    s = shaper.chat(messages, kwargs, fields)                    # rendered, the template's stops added
    req = server.submit(s.prompt, s.params, param=s.param)

`fields` are SamplingParams' fields as a door read them (types are the door's concern:
HTTP's JSON in serving/http/completions.py, gRPC's protobuf in serving/grpc/api.py), with
`max_tokens` None when the client left it out. Why here: each door used to do this itself
(its own default max_tokens, its own merge of the chat's stops with its own message, its
own rendering), and the two drifted. The limits stay in serving/engine/limits.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from serving.chat import Chat
from serving.engine.limits import default_max_tokens, merge_stops
from serving.engine.sampling import SamplingParams


@dataclass(frozen=True)
class Shaped:
    prompt: str                 # the text the model continues
    params: SamplingParams
    param: str = "prompt"       # the field the prompt came from ("messages": a rendered chat)


class Shaper:
    def __init__(self, chat: Chat, max_new_tokens: int):
        self.chat_template, self.max_new_tokens = chat, max_new_tokens

    def params(self, fields: dict, kind: str) -> SamplingParams:
        """SamplingParams from a door's fields; an unset max_tokens takes `kind`'s default."""
        fields = dict(fields)
        if fields.get("max_tokens") is None:
            fields["max_tokens"] = default_max_tokens(kind, fields.get("n", 1), self.max_new_tokens)
        return SamplingParams(**fields)

    def completion(self, prompt: str, fields: dict, kind: str = "completions") -> Shaped:
        return Shaped(prompt, self.params(fields, kind))

    def chat(self, messages: list[dict], kwargs: dict, fields: dict, param: str = "messages") -> Shaped:
        """A checked conversation (serving/chat.py's check_messages) rendered through the
        model's template; the reply also ends at the template's stops. `param` names the
        field the conversation came from (/v1/responses' is "input")."""
        params = self.params(fields, "chat")
        params = dataclasses.replace(params, stop=merge_stops(params.stop, self.chat_template.stop))
        return Shaped(self.chat_template.render(messages, kwargs, param=param), params, param)
