"""Continuous batching over the in-place KV cache, on one engine thread.

    engine = Engine(artifact, EngineConfig(max_batch=32), Runtime(artifact, slots=32), publish)
    engine.warmup(); engine.start()
    req = engine.submit("ROMEO:", SamplingParams(...), sink)   # InvalidRequest / QueueFull
    ... publish([(req, Event), ...]) is called from the engine thread ...
    req.cancel()                                                # leaves at the next step
    engine.stop()                                               # every request still here ends

Threads: `submit` runs on the caller's thread (the server's event loop); it validates,
encodes and hands the request over through the inbox queue, and touches nothing else.
Everything else (the slot table, the requests' progress, the outbox) belongs to the engine
thread. The one field the front end writes afterwards is `Request.cancelled`, a flag the
engine reads at its next step.

A request owns one slot of the KV cache (serving/slots.py) from admission to finish.
Joining is prefilling its prompt into its slot (newcomers in adjacent slots share one
call); leaving frees the slot; no other row's cache is ever touched. Each step decodes one
token for rows [0, rows) in one ONNX Runtime call and samples them together
(serving/sampling.py). A row whose cache is full re-prefills its newest tokens into its
own slot and goes on (core/window.py, the rule every runtime slides by). `check_stop` is
the one place a request's end is decided. If the loop dies, every request ends with an
error at once and `on_crash` tells the server, which stops serving.
"""
from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.artifact import Artifact
from core.errors import InvalidRequest, QueueFull
from core.logprobs import token_logprobs
from core.tokens import TextStream
from core.window import refill
from serving.runtime import Runtime
from serving.sampling import MAX_LOGPROBS, SamplingParams, make_rng, sample_batch, split_stop
from serving.slots import SlotState, SlotTable
from serving.speculate import Acceptance, NgramDrafter

log = logging.getLogger("shelley.engine")
MAX_STOP, MAX_STOP_CHARS = 8, 64
MAX_INT32 = 2**31 - 1    # top_k's limit: gRPC's int32, and numpy's arrays hold it
PREFILL_BATCH = 8   # newcomers per step, so running rows wait for one short prefill at most


class Finish(str, enum.Enum):
    STOP = "stop"            # end-of-text token or a stop string
    LENGTH = "length"        # max_tokens reached
    CANCELLED = "cancelled"  # the client left, its deadline passed, or the drain ran out
    ERROR = "error"          # the engine failed


@dataclass
class EngineConfig:
    max_batch: int = 32
    max_queue: int = 256
    max_new_tokens: int = 1024
    speculate: int = 4       # draft tokens a lone row may verify per step (0 = off)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float                       # of the model's distribution, before sampling settings
    top: list[tuple[int, float]]         # the k most likely (id, logprob), best first


@dataclass
class Event:
    """One message for the client; finish_reason is set on the last one."""
    text: str
    token_ids: list[int]
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None   # one per token id, when asked for


@dataclass(eq=False)
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    text: TextStream
    sink: object = None                  # the front end's per-request queue
    # ---- the engine thread's, from the moment the request is in the inbox ----
    ids: list[int] = field(default_factory=list)   # prompt + generated: the window slides over it
    held: str = ""                       # text that may be the start of a stop string
    generated: int = 0
    slot: int = -1
    done: bool = False
    t_submit: float = field(default_factory=time.perf_counter)
    t_last: float = 0.0
    drafts: NgramDrafter | None = None   # speculative decoding, made when first running alone
    acceptance: Acceptance | None = None
    # ---- the front end's: set once, read by the engine at its next step ----
    cancelled: bool = False

    def __post_init__(self):
        self.ids = list(self.prompt_ids)
        self.rng = make_rng(self.params.seed)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def cancel(self) -> None:
        self.cancelled = True


def check_stop(req: Request, token: int, eos: int) -> tuple[Finish | None, str]:
    """Record `token` for `req`: (why it ends, or None; the text it may send now).

    At the end the held text goes out, and a UTF-8 sequence the last bytes left open
    becomes U+FFFD (as the tokenizer's own decode shows it); text past a stop string never."""
    if token == eos and not req.params.ignore_eos:
        return Finish.STOP, req.held + req.text.flush()
    req.ids.append(token)
    text, req.held, hit = split_stop(req.held + req.text.step(token), req.params.stop)
    if hit:
        return Finish.STOP, text
    if req.generated >= req.params.max_tokens:
        return Finish.LENGTH, text + req.held + req.text.flush()
    return None, text


def check_text(text: str, param: str) -> None:
    """Refuse a string that cannot be UTF-8 (JSON may carry a lone surrogate, `"\\ud800"`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(f"{param} is not valid Unicode: a lone surrogate U+{ord(text[e.start]):04X} at "
                             f"character {e.start}; send UTF-8 text (surrogates only in escaped pairs)",
                             param=param) from None


class Engine:
    def __init__(self, artifact: Artifact, config: EngineConfig, runtime: Runtime,
                 publish: Callable[[list[tuple[Request, Event]]], None], metrics=None,
                 on_crash: Callable[[BaseException], None] | None = None):
        self.config, self.rt, self.publish, self.metrics, self.on_crash = config, runtime, publish, metrics, on_crash
        mc = artifact.config
        self.tokenizer, self.tokens = artifact.tokenizer, artifact.tokens
        self.context, self.eos = mc.context_length, mc.eos_token_id
        self.inbox: queue.Queue[Request] = queue.Queue(maxsize=config.max_queue)   # the hand-over
        # ---- the engine thread's ----
        self.table = SlotTable(min(config.max_batch, runtime.slots))
        self.admitting: list[Request] = []    # taken from the inbox, not yet in a slot
        self.outbox: list[tuple[Request, Event]] = []
        self.crashed: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shelley-engine", daemon=True)

    # ---- called from the front end's thread ----------------------------------------------
    def submit(self, prompt: str, params: SamplingParams, sink=None) -> Request:
        """Validate and queue a request; its events go to `publish` with `req.sink` set."""
        self.validate(params)
        req = Request(self.encode(prompt), params, self.tokens.stream(), sink)
        try:
            self.inbox.put_nowait(req)
        except queue.Full:
            raise QueueFull(f"queue is full ({self.config.max_queue} waiting); retry later") from None
        if self.metrics:
            self.metrics.waiting.set(self.inbox.qsize())
        return req

    def encode(self, prompt: str) -> list[int]:
        """The prompt's token ids (an empty prompt starts from end-of-text), within the context."""
        check_text(prompt, "prompt")
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else [self.eos]
        if len(ids) > self.context:
            raise InvalidRequest(f"prompt is {len(ids)} tokens; the limit is the context length, {self.context}",
                                 param="prompt")
        return ids

    def validate(self, p: SamplingParams) -> None:
        limit = self.config.max_new_tokens
        if not 1 <= p.max_tokens <= limit:
            raise InvalidRequest(f"max_tokens must be between 1 and {limit}, got {p.max_tokens}", param="max_tokens")
        if not p.temperature >= 0:
            raise InvalidRequest(f"temperature must be >= 0, got {p.temperature}", param="temperature")
        if not 0 < p.top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {p.top_p}", param="top_p")
        if not 0 <= p.top_k <= MAX_INT32:
            raise InvalidRequest(f"top_k must be between 0 and {MAX_INT32} (0 = off), got {p.top_k}", param="top_k")
        if p.logprobs is not None and not 0 <= p.logprobs <= MAX_LOGPROBS:
            raise InvalidRequest(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {p.logprobs}", param="logprobs")
        if len(p.stop) > MAX_STOP:
            raise InvalidRequest(f"stop has {len(p.stop)} strings; the limit is {MAX_STOP}", param="stop")
        for s in p.stop:
            if not s or len(s) > MAX_STOP_CHARS:
                raise InvalidRequest(f"stop strings must be 1 to {MAX_STOP_CHARS} characters, got {len(s)}",
                                     param="stop")
            check_text(s, "stop")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop: every request still waiting or running ends CANCELLED."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def abandon(self) -> None:
        """After the thread has died: end what reached the inbox after its last look (the
        server stops admitting only once it hears of the crash)."""
        self._thread.join()
        self._close(Finish.ERROR)

    def warmup(self) -> None:
        """Prefill and decode at batch 1 and 2 (both sessions), so the first request pays no setup."""
        for n in sorted({1, min(2, self.rt.slots)}):
            self.rt.prefill(0, [[self.eos] * 4] * n)
            self.rt.decode(np.full(n, self.eos), np.full(n, 4))

    # ---- the engine thread ---------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._admit()
                if self.table.running:
                    self._step()
                self._flush()
        except BaseException as e:  # a bug here must not leave clients hanging, nor look healthy
            log.exception("engine loop crashed; failing every request")
            self.crashed = e
        self._close(Finish.ERROR if self.crashed else Finish.CANCELLED)
        if self.crashed and self.on_crash:
            self.on_crash(self.crashed)

    def _close(self, reason: Finish) -> None:
        """End every request still here: waiting in the inbox, being admitted, or in a slot."""
        while True:
            try:
                self.admitting.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        for r in [*self.admitting, *(r for _, r in self.table.active())]:
            self._finish(r, reason)
        self.admitting.clear()
        self._flush()

    def _admit(self) -> None:
        """Waiting requests take free slots and are prefilled into them."""
        if not self.table.running:
            try:
                self.admitting.append(self.inbox.get(timeout=0.05))  # idle: sleep until work comes
            except queue.Empty:
                return
        while len(self.admitting) < min(self.table.free, PREFILL_BATCH):
            try:
                self.admitting.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        if not self.admitting:
            return
        if self.metrics:
            self.metrics.waiting.set(self.inbox.qsize())
        now, live = time.perf_counter(), []
        for r in self.admitting:
            if self.metrics:
                self.metrics.queue_wait.observe(now - r.t_submit)
                self.metrics.prompt_tokens.inc(r.prompt_tokens)
            if r.cancelled:
                self._finish(r, Finish.CANCELLED)
            else:
                live.append(r)
        self.admitting.clear()
        if live:
            self._prefill(self.table.admit(live), [r.ids for r in live])
            self._flush()  # first tokens go out now, not after the next decode step

    def _prefill(self, slots: list[int], windows: list[list[int]]) -> None:
        """Prefill each window into its slot (runs of adjacent slots in one call), sample."""
        window_of = dict(zip(slots, windows))
        for first, run in SlotTable.runs(slots):
            for s in run:
                self.table.state[s] = SlotState.PREFILLING
            logits = self.rt.prefill(first, [window_of[s] for s in run], self.eos)
            for s in run:
                self.table.lengths[s] = len(window_of[s])
                self.table.state[s] = SlotState.GENERATING
            self._sample(run, logits)

    def _step(self) -> None:
        """One decode step for every generating row."""
        for s, r in self.table.active():
            if r.cancelled:
                self._finish(r, Finish.CANCELLED)
        n = self.table.rows
        if not n:
            return
        t = self.table
        if self.config.speculate and t.running == 1 and self._speculate(n - 1, t.owner[n - 1]):
            return
        logits = self.rt.decode(t.tokens[:n], t.lengths[:n])
        slots = [s for s, _ in t.active()]
        t.lengths[slots] += 1
        if self.metrics:
            self.metrics.batch_size.observe(len(slots))
        self._sample(slots, logits[slots])

    def _speculate(self, s: int, r: Request) -> bool:
        """A lone row's step with a draft (serving/speculate.py): feed the pending token and
        up to `speculate` drafted ones in one call, then sample each position as a plain step
        would (same sampler, same random draw), keeping drafted tokens while they equal the
        sampled ones. False when there is no draft (a plain step follows)."""
        if r.drafts is None:
            r.drafts, r.acceptance = NgramDrafter(), Acceptance()
        if not r.acceptance.wanted():
            return False
        r.drafts.sync(r.ids)
        cached = int(self.table.lengths[s])
        room = min(self.context - cached - 1, r.params.max_tokens - r.generated - 1)
        draft = r.drafts.propose(min(self.config.speculate, room))
        if not draft:
            return False
        fed = [int(self.table.tokens[s]), *draft]
        logits = self.rt.extend(s, cached, fed)
        accepted = 0
        for j in range(len(fed)):
            tok = int(sample_batch(logits[j:j + 1], [r.params], [r.rng])[0])
            self.table.lengths[s] = cached + j + 1          # the cache holds fed[:j + 1]
            if self._emit(r, tok, self._logprobs([r], logits[j:j + 1], np.array([tok]))[0]):
                break
            self.table.tokens[s] = tok
            if j == len(draft) or tok != draft[j]:
                break
            accepted += 1
        r.acceptance.record(len(draft), accepted)
        if self.metrics:
            self.metrics.batch_size.observe(1)
            self.metrics.generated_tokens.inc(j + 1)
            self.metrics.spec_drafted.inc(len(draft))
            self.metrics.spec_accepted.inc(accepted)
        if not r.done:
            window = refill(r.ids, int(self.table.lengths[s]), self.context)
            if window is not None:
                self._prefill([s], [window])
        return True

    def _sample(self, slots: list[int], logits: np.ndarray) -> None:
        """Sample the next token of each slot's request from its logits row; end or go on."""
        reqs = [self.table.owner[s] for s in slots]
        tokens = sample_batch(logits, [r.params for r in reqs], [r.rng for r in reqs])
        if self.metrics:
            self.metrics.generated_tokens.inc(len(reqs))
        logprobs = self._logprobs(reqs, logits, tokens)
        sliding, windows = [], []
        for s, r, tok, lp in zip(slots, reqs, tokens.tolist(), logprobs):
            if self._emit(r, tok, lp):
                continue
            self.table.tokens[s] = tok
            window = refill(r.ids, int(self.table.lengths[s]), self.context)
            if window is not None:
                sliding.append(s)
                windows.append(window)
        if sliding:  # those caches are full: re-prefill each one's window, in place
            self._prefill(sliding, windows)

    def _logprobs(self, reqs: list[Request], logits: np.ndarray, tokens: np.ndarray) -> list:
        want = [i for i, r in enumerate(reqs) if r.params.logprobs is not None]
        out: list[list[TokenLogprob] | None] = [None] * len(reqs)
        if want:   # off costs nothing; on, one vectorised pass for the rows that asked
            k = max(reqs[i].params.logprobs for i in want)
            lp, top, top_lp = token_logprobs(logits[want], tokens[want], k)
            for j, i in enumerate(want):
                kk = reqs[i].params.logprobs
                out[i] = [TokenLogprob(int(tokens[i]), float(lp[j]),
                                       list(zip(top[j, :kk].tolist(), top_lp[j, :kk].tolist())))]
        return out

    def _emit(self, r: Request, tok: int, logprobs) -> bool:
        """Record a sampled token and queue its text; True when the request is finished."""
        r.generated += 1
        now = time.perf_counter()
        if self.metrics:
            if r.generated == 1:
                self.metrics.ttft.observe(now - r.t_submit)
            else:
                self.metrics.inter_token.observe(now - r.t_last)
        r.t_last = now
        reason, text = check_stop(r, tok, self.eos)
        if reason is None:
            self.outbox.append((r, Event(text, [tok], logprobs=logprobs)))
            return False
        sent = [] if tok == self.eos and not r.params.ignore_eos else [tok]   # EOS is not sent
        self._finish(r, reason, text, sent, logprobs if sent else None)
        return True

    def _finish(self, r: Request, reason: Finish, text: str = "", token_ids: list[int] | None = None,
                logprobs=None) -> None:
        if r.done:
            return
        r.done = True
        if r.slot >= 0 and self.table.owner[r.slot] is r:
            self.table.release(r.slot)
        self.outbox.append((r, Event(text, token_ids or [], reason.value, r.prompt_tokens,
                                     r.generated, logprobs)))

    def _flush(self) -> None:
        if self.metrics:
            self.metrics.running.set(self.table.running)
        if self.outbox:
            batch, self.outbox = self.outbox, []
            self.publish(batch)
