"""The output processor: each sampled token becomes text and an event; a request's end is
decided here, through the one `check_stop` (serving/engine/requests.py).

    out = Output(eos, publish, metrics)
    if out.token(req, token, logprobs):   # True: req has ended, its last event is queued
        ...free its slot...
    out.end(req, Finish.CANCELLED)        # it leaves without a token (cancelled, drained, crashed)
    out.flush()                           # this step's events in one publish([(req, Event), ...])

Why a part of its own: detokenising, stop strings, the first-token and inter-token timings
and the events are about what the client receives, not about which rows run; the loop
(serving/engine/core.py) hands it each sampled token and reads back one bit, whether the
request ended. It writes the request's text state (`held`, the decoder, `ids` through
`check_stop`, `generated`, `done`, its grammar's place) and nothing of the slots. Events go out once per flush,
so a step costs the event loop one wake-up, whatever the batch.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from serving.engine.requests import Event, Finish, Request, TokenLogprob, check_stop


class Output:
    def __init__(self, eos: int, publish: Callable[[list[tuple[Request, Event]]], None], metrics=None):
        self.eos, self.publish, self.metrics = eos, publish, metrics
        self.outbox: list[tuple[Request, Event]] = []

    def token(self, r: Request, tok: int, logprobs: list[TokenLogprob] | None) -> bool:
        """Record a sampled token and queue its text; True when the request has ended."""
        r.generated += 1
        now = time.perf_counter()
        if self.metrics:
            if r.generated == 1:
                self.metrics.ttft.observe(now - r.t_submit)
            else:
                self.metrics.inter_token.observe(now - r.t_last)
        r.t_last = now
        if r.grammar is not None and tok != self.eos:
            r.grammar.accept(tok)   # before check_stop: a complete grammar ends the request
        reason, text = check_stop(r, tok, self.eos)
        step, r.grammar_step = r.grammar_step, None   # the sampler's trace of this token, if asked
        trace = [step] if step is not None else None
        if reason is None:
            self.outbox.append((r, Event(text, [tok], logprobs=logprobs, index=r.index,
                                         prompt_logprobs=take_prompt_lp(r), grammar_trace=trace)))
            return False
        sent = [] if tok == self.eos and not r.params.ignore_eos else [tok]   # EOS is not sent
        self.end(r, reason, text, sent, logprobs if sent else None, trace if sent else None)
        return True

    def end(self, r: Request, reason: Finish, text: str = "", token_ids: list[int] | None = None,
            logprobs=None, trace=None) -> None:
        """Queue the request's last event (once: a request already ended is left alone)."""
        if r.done:
            return
        r.done = True
        self.outbox.append((r, Event(text, token_ids or [], reason.value, r.prompt_tokens,
                                     r.generated, logprobs, r.index, take_prompt_lp(r), trace, r.cached_tokens)))

    def flush(self) -> None:
        if self.outbox:
            batch, self.outbox = self.outbox, []
            self.publish(batch)


def take_prompt_lp(r: Request) -> list[TokenLogprob] | None:
    """The prompt's logprobs go with a choice's first event, once."""
    lp, r.prompt_lp = r.prompt_lp, None
    return lp
