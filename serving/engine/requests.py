"""A request's state and its events, and the one decision of when it ends (`check_stop`).

    req = Request(prompt_ids, params, table.stream(), sink)   # the engine builds these (Engine.submit)
    reason, text = check_stop(req, token, eos)                # (Finish or None, text to send now)
    Event(text, token_ids, finish_reason, ...)                 # what the front ends receive

Ownership: the fields under "the engine thread's" belong to the engine from the moment the
request is in its inbox; the front end writes only `cancelled` (through `cancel()`, which
cancels all of a request's n choices). serving/engine/core.py re-exports these names.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from core.tokens import TextStream
from serving.engine.sampling import SamplingParams, make_rng, split_stop
from serving.engine.speculate import Acceptance, NgramDrafter


class Finish(str, enum.Enum):
    STOP = "stop"            # end-of-text token or a stop string
    LENGTH = "length"        # max_tokens reached
    CANCELLED = "cancelled"  # the client left, its deadline passed, or the drain ran out
    ERROR = "error"          # the engine failed


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float                       # of the model's distribution, before sampling settings
    top: list[tuple[int, float]]         # the k most likely (id, logprob), best first


@dataclass
class GrammarStep:
    """One token sampled under a grammar, for a request that asked (`SamplingParams.grammar_trace`):
    what the model wanted before the mask and what the mask let through. Logprobs are of the
    model's raw logits, as TokenLogprob's."""
    wanted: int                          # the model's own top token, before the mask
    wanted_logprob: float
    wanted_allowed: bool                 # whether the grammar allowed it
    token_id: int                        # the token sampled
    logprob: float
    allowed: int                         # how many tokens the mask allowed
    allowed_logprob: float               # the model's probability mass on those tokens (log)
    allowed_top: list[tuple[int, float]] = field(default_factory=list)   # the most likely allowed (id, logprob)


@dataclass
class Event:
    """One message for the client; finish_reason is set on the last one."""
    text: str
    token_ids: list[int]
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None   # one per token id, when asked for
    index: int = 0                        # which of the request's n choices
    prompt_logprobs: list[TokenLogprob] | None = None   # on a choice's first event: prompt tokens 2..
    grammar_trace: list[GrammarStep] | None = None   # one per token id sampled under a grammar, when asked
    cached_tokens: int = 0                # on the last event: prompt tokens its slot's cache already held


@dataclass(eq=False)
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    text: TextStream
    sink: object = None                  # the front end's per-request queue (shared by the n choices)
    index: int = 0                       # its choice number; choices[0] is the one submit returns
    grammar: object = None               # its structured output's GrammarState (serving/engine/grammar.py)
    # ---- the engine thread's, from the moment the request is in the inbox ----
    ids: list[int] = field(default_factory=list)   # prompt + generated: the window slides over it
    held: str = ""                       # text that may be the start of a stop string
    generated: int = 0
    slot: int = -1
    window_start: int = 0                # ids[window_start:] are in its slot's cache, from position 0
    done: bool = False
    t_submit: float = field(default_factory=time.perf_counter)
    t_last: float = 0.0
    prompt_lp: list[TokenLogprob] | None = None   # computed at its prefill, sent with its first event
    grammar_step: GrammarStep | None = None   # set by the sampler, sent with the token's event
    cached_tokens: int = 0               # prompt tokens not fed: a free slot's cache held them (the prefix cache)
    drafts: NgramDrafter | None = None   # speculative decoding (serving/engine/speculate.py), made when first alone
    acceptance: Acceptance | None = None
    # ---- the front end's: set once, read by the engine at its next step ----
    cancelled: bool = False

    def __post_init__(self):
        self.ids = list(self.prompt_ids)
        self.rng = make_rng(self.params.seed)
        self.choices: list[Request] = [self]    # all n choices, this one first (set by submit)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def cancel(self) -> None:
        for r in self.choices:
            r.cancelled = True


def check_stop(req: Request, token: int, eos: int) -> tuple[Finish | None, str]:
    """Record `token` for `req`: (why it ends, or None; the text it may send now).

    At the end the held text goes out, and a UTF-8 sequence the last bytes left open
    becomes U+FFFD (as the tokenizer's own decode shows it); text past a stop string never."""
    if token == eos and not req.params.ignore_eos:
        return Finish.STOP, req.held + req.text.flush()
    req.ids.append(token)
    if req.generated < req.params.min_tokens:   # too early to stop: the text goes out as it is
        text, req.held, hit = req.held + req.text.step(token), "", False
    else:
        text, req.held, hit = split_stop(req.held + req.text.step(token), req.params.stop)
    if hit:
        return Finish.STOP, text
    if req.grammar is not None and req.grammar.done:   # complete: the grammar allows nothing more
        return Finish.STOP, text + req.held + req.text.flush()
    if req.generated >= req.params.max_tokens:
        return Finish.LENGTH, text + req.held + req.text.flush()
    return None, text
