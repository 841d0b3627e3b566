"""The gRPC front door: a thin TextGeneration servicer over the server's engine.

    pb_grpc.add_TextGenerationServicer_to_server(TextGeneration(server), grpc_server)
    grpc.aio.server(interceptors=[..., DecodeGuard()])   # undecodable bytes -> INVALID_ARGUMENT

Each RPC hands off to `Server.submit` / `Server.events` in a few lines; a request is shaped
as HTTP's are (serving/shape.py): one with `messages` is a chat (rendered by the server's
chat template first; its tools and the calls a reply makes are read by serving/grpc/chat.py
with serving/tools.py), one with `n` > 1 is answered choice by choice (`index`). Exceptions become
status codes in one table (`STATUS`, applied by the `rpc` wrapper), which also counts every
RPC by method and code and writes its access-log line with the request id (the client's
`x-request-id` metadata, else a new one, sent back in the initial metadata).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import time

import grpc
from google.protobuf.message import DecodeError

from core.errors import EngineFailed, InvalidRequest, QueueFull, ShuttingDown
from core.tokens import TokenTable
from serving.engine.requests import GrammarStep, TokenLogprob
from serving.chat import check_kwargs
from serving.logs import Access, request_id
from serving.grpc.chat import Calls, messages_of, tools_of
from serving.grpc.proto import pb, pb_grpc
from serving.tokenize import text_of, token_view

log = logging.getLogger("shelley.grpc")

# exception -> status code; EngineFailed depends on whether tokens were sent (status_of)
STATUS = {InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT, QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
          ShuttingDown: grpc.StatusCode.UNAVAILABLE}


def status_of(e: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, EngineFailed):   # nothing sent yet: safe to retry on another replica
        return (grpc.StatusCode.INTERNAL if e.started else grpc.StatusCode.UNAVAILABLE), str(e)
    for kind, code in STATUS.items():
        if isinstance(e, kind):
            return code, str(e)
    log.exception("unexpected error in an RPC")
    return grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}"


class Undecodable:
    """What a request deserializes to when its bytes are not a valid message."""

    def __init__(self, error: str):
        self.error = error


def tolerant(deserialize):
    """A deserializer that returns Undecodable instead of raising: gRPC would answer a raising
    one with UNKNOWN, where the client's mistake deserves INVALID_ARGUMENT and a reason."""
    def parse(data: bytes):
        try:
            return deserialize(data)
        except DecodeError as e:
            return Undecodable(str(e))
    return parse


class DecodeGuard(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return handler._replace(request_deserializer=tolerant(handler.request_deserializer))


def rpc(fn):
    """Map exceptions to status codes, record requests_total / request_duration, give the
    call its request id and write its access line. The handler gets the Access record."""
    name = fn.__name__

    async def begin(request, context) -> Access:
        metadata = dict(context.invocation_metadata() or ())
        access = Access(request_id(metadata.get("x-request-id")), "grpc", name)
        await context.send_initial_metadata((("x-request-id", access.request_id),))
        if isinstance(request, Undecodable):
            raise InvalidRequest(f"the request is not a valid {name} message ({request.error}); "
                                 "strings must be UTF-8")
        return access

    def record(self, code: grpc.StatusCode, access: Access | None, t0: float) -> None:
        self.metrics.requests.labels(rpc=name, code=code.name).inc()
        self.metrics.duration.labels(rpc=name).observe(time.perf_counter() - t0)
        if access:
            access.done(code.name)

    @contextlib.asynccontextmanager
    async def observed(self, request, context):
        """The call's Access; on the way out its status is recorded: OK when the body ends
        normally, the mapped code of an error (sent with context.abort, which raises), else
        CANCELLED (the client left)."""
        t0, access, code = time.perf_counter(), None, grpc.StatusCode.CANCELLED
        try:
            access = await begin(request, context)
            yield access
            code = grpc.StatusCode.OK
        except Exception as e:
            code, message = status_of(e)
            await context.abort(code, message)
        finally:
            record(self, code, access, t0)

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            async with observed(self, request, context) as access:
                async for item in fn(self, request, context, access):
                    yield item
        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        async with observed(self, request, context) as access:
            return await fn(self, request, context, access)
    return unary


def fields_of(r: pb.GenerateRequest) -> dict:
    """The request's SamplingParams fields (max_tokens None when unset: serving/shape.py
    fills the default; limits are checked by the engine)."""
    opt = lambda name, default: getattr(r, name) if r.HasField(name) else default   # noqa: E731
    return dict(
        max_tokens=opt("max_tokens", None), temperature=opt("temperature", 1.0), top_k=r.top_k,
        top_p=opt("top_p", 1.0), seed=opt("seed", None), stop=tuple(r.stop), ignore_eos=r.ignore_eos,
        logprobs=opt("logprobs", None), presence_penalty=opt("presence_penalty", 0.0),
        frequency_penalty=opt("frequency_penalty", 0.0), repetition_penalty=opt("repetition_penalty", 1.0),
        logit_bias=tuple(sorted(r.logit_bias.items())), min_tokens=opt("min_tokens", 0), n=opt("n", 1),
        prompt_logprobs=opt("prompt_logprobs", None), truncate_prompt_tokens=opt("truncate_prompt_tokens", None),
        grammar_trace=r.grammar_trace)


def format_of(r: pb.GenerateRequest) -> dict | None:
    """The ResponseFormat as HTTP's response_format object (serving/structured.py reads both)."""
    if not r.HasField("response_format"):
        return None
    f = r.response_format
    out: dict = {"type": f.type, "regex": f.regex, "grammar": f.grammar, "choice": list(f.choice),
                 "syntax": f.syntax or "lark"}
    if f.type == "json_schema":
        try:
            out["json_schema"] = {"schema": json.loads(f.json_schema)}
        except ValueError:
            raise InvalidRequest("response_format.json_schema must be a JSON Schema as JSON text",
                                 param="response_format.json_schema") from None
    return out


def pb_logprobs(entries: list[TokenLogprob] | None, tokens: TokenTable) -> list[pb.TokenLogprob]:
    return [pb.TokenLogprob(token_id=e.token_id, token=tokens.text(e.token_id), logprob=e.logprob,
                            top=[pb.TopLogprob(token_id=i, token=tokens.text(i), logprob=lp) for i, lp in e.top])
            for e in entries or []]


def pb_trace(steps: list[GrammarStep] | None, tokens: TokenTable) -> list[pb.GrammarStep]:
    """What the grammar did to each token, when asked (HTTP's shelley_grammar_trace)."""
    def one(token_id: int, logprob: float) -> pb.TopLogprob:
        return pb.TopLogprob(token_id=token_id, token=tokens.text(token_id), logprob=logprob)
    return [pb.GrammarStep(sampled=one(s.token_id, s.logprob), wanted=one(s.wanted, s.wanted_logprob),
                           wanted_allowed=s.wanted_allowed, allowed_tokens=s.allowed, allowed_logprob=s.allowed_logprob,
                           allowed_top=[one(i, lp) for i, lp in s.allowed_top])
            for s in steps or []]


class TextGeneration(pb_grpc.TextGenerationServicer):
    def __init__(self, server):
        self.server, self.metrics, self.tokens = server, server.metrics, server.artifact.tokens

    def _events(self, request: pb.GenerateRequest, access: Access):
        """(the request's events, the reader of its choices' tool calls)."""
        server = self.server
        tools = tools_of(request)
        if request.messages:     # chat: the conversation, rendered, is the prompt
            if request.prompt:
                raise InvalidRequest("set prompt or messages, not both", param="prompt")
            s = server.shaper.chat(messages_of(request.messages), check_kwargs(dict(request.chat_template_kwargs)),
                                   fields_of(request), response_format=format_of(request), tools=tools)
        else:
            if tools is not None:
                raise InvalidRequest("tools need a chat: send messages, not a prompt", param="tools")
            s = server.shaper.completion(request.prompt, fields_of(request), kind="generate",
                                         response_format=format_of(request))
        return server.events(server.submit(s.prompt, s.params, param=s.param), access), Calls(tools, s.params.n)

    @rpc
    async def Generate(self, request, context, access):
        events, calls = self._events(request, access)
        async for ev in events:
            if ev.finish_reason:
                text, made, finish = calls.finish(ev.index, ev.text, ev.finish_reason)
            else:
                (text, made), finish = calls.feed(ev.index, ev.text), ""
            msg = pb.GenerateResponse(text=text, token_ids=ev.token_ids, finish_reason=finish,
                                      logprobs=pb_logprobs(ev.logprobs, self.tokens), index=ev.index,
                                      prompt_logprobs=pb_logprobs(ev.prompt_logprobs, self.tokens), tool_calls=made,
                                      grammar_trace=pb_trace(ev.grammar_trace, self.tokens))
            if ev.finish_reason:
                msg.usage.prompt_tokens, msg.usage.completion_tokens = ev.prompt_tokens, ev.completion_tokens
                msg.usage.cached_tokens = ev.cached_tokens
            yield msg

    @rpc
    async def Complete(self, request, context, access):
        events, calls = self._events(request, access)
        choices: dict[int, pb.Choice] = {}
        prompt_lp, prompt_tokens, cached = [], 0, 0
        async for ev in events:
            c = choices.setdefault(ev.index, pb.Choice(index=ev.index))
            c.text += ev.text
            c.token_ids.extend(ev.token_ids)
            c.logprobs.extend(pb_logprobs(ev.logprobs, self.tokens))
            c.grammar_trace.extend(pb_trace(ev.grammar_trace, self.tokens))
            prompt_lp = prompt_lp or pb_logprobs(ev.prompt_logprobs, self.tokens)
            if ev.finish_reason:
                c.finish_reason, c.completion_tokens, prompt_tokens = ev.finish_reason, ev.completion_tokens, ev.prompt_tokens
                cached = max(cached, ev.cached_tokens)
        for c in choices.values():   # a reply that calls tools: its calls, and no text
            text, made, c.finish_reason = calls.finish(c.index, c.text, c.finish_reason)
            c.text = text
            c.tool_calls.extend(made)
        ordered = [choices[i] for i in sorted(choices)]
        first = ordered[0]
        return pb.CompleteResponse(text=first.text, token_ids=first.token_ids, finish_reason=first.finish_reason,
                                   usage=pb.Usage(prompt_tokens=prompt_tokens, cached_tokens=cached,
                                                  completion_tokens=sum(c.completion_tokens for c in ordered)),
                                   logprobs=first.logprobs, choices=ordered if len(ordered) > 1 else [],
                                   prompt_logprobs=prompt_lp, tool_calls=first.tool_calls,
                                   grammar_trace=first.grammar_trace)

    @rpc
    async def Tokenize(self, request, context, access):
        if request.messages:
            add = request.add_generation_prompt if request.HasField("add_generation_prompt") else True
            view = token_view(self.server, messages=messages_of(request.messages),
                              kwargs=check_kwargs(dict(request.chat_template_kwargs)), add_generation_prompt=add)
        else:
            view = token_view(self.server, prompt=request.prompt)
        return pb.TokenizeResponse(**view)

    @rpc
    async def Detokenize(self, request, context, access):
        return pb.DetokenizeResponse(prompt=text_of(self.server, list(request.tokens)))

    @rpc
    async def GetModelInfo(self, request, context, access):
        card = self.server.card
        return pb.ModelInfo(
            name=card.name, architecture=card.architecture, params=card.params, vocab_size=card.vocab_size,
            context_length=card.context_length, n_layer=card.n_layer, n_head=card.n_head,
            head_dim=card.head_dim, eos_token_id=card.eos_token_id, window_keep=card.window_keep,
            provider=card.provider, dtype=card.precision, max_batch=card.max_batch,
            max_new_tokens=card.max_new_tokens, chat_template=card.chat_template, chat_stop=card.chat_stop,
            chat_speakers=card.chat_speakers)
