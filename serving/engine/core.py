"""Continuous batching over the in-place KV cache, on one engine thread.

    engine = Engine(artifact, EngineConfig(max_batch=32), Runtime(artifact, slots=32), publish)
    engine.warmup(); engine.start()
    req = engine.submit("ROMEO:", SamplingParams(...), sink)   # InvalidRequest / QueueFull
    ... publish([(req, Event), ...]) is called from the engine thread ...
    req.cancel()                                                # leaves at the next step
    engine.stop()                                               # every request still here ends

Threads: `submit` runs on the caller's thread (the server's event loop); it validates,
encodes and hands the request over through the inbox queue, and sets the waiting gauge
(a metric, thread-safe); it touches no engine state. Everything else (the slot table, the requests' progress, the outbox) belongs to the engine
thread. The one field the front end writes afterwards is `Request.cancelled`, a flag the
engine reads at its next step.

A request owns one slot of the KV cache (serving/engine/slots.py) from admission to finish.
Joining is prefilling its prompt into its slot (newcomers in adjacent slots share one
call); leaving frees the slot; no other row's cache is ever touched. A request for n
choices is n requests admitted together: the prompt is prefilled into the first one's slot
and copied into the others' (`Runtime.copy_prefix`; on CUDA each is prefilled). Each step
decodes one token for rows [0, rows) in one ONNX Runtime call and samples them together
(serving/engine/sampling.py), after penalties, logit_bias and min_tokens (serving/engine/penalties.py)
and, for the rows that asked for structured output, their grammar's mask (serving/engine/grammar.py).
A row whose cache is full re-prefills its newest tokens into its own slot and goes on
(core/window.py, the rule every runtime slides by). A row running alone may verify tokens
drafted from its own text in one call (`_speculate`, serving/engine/speculate.py). `check_stop`
(serving/engine/requests.py, with the request and event types) is the one place a request's end
is decided. If the loop dies, every request ends with an error at once and `on_crash`
tells the server, which stops serving.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.artifact import Artifact
from core.errors import QueueFull
from core.logprobs import token_logprobs
from core.window import refill
from serving.engine.grammar import Grammars
from serving.engine.limits import check_params, check_prompt, check_text
from serving.engine.penalties import Penalties
from serving.engine.requests import Event, Finish, Request, TokenLogprob, check_stop  # noqa: F401 (re-exported)
from serving.engine.runtime import Runtime
from serving.engine.sampling import SamplingParams, sample_batch
from serving.engine.slots import SlotState, SlotTable
from serving.engine.speculate import Acceptance, NgramDrafter

log = logging.getLogger("shelley.engine")
PREFILL_BATCH = 8   # newcomers per step, so running rows wait for one short prefill at most
MIN_REUSE = 8       # a free slot's cached tokens are reused from this many shared prompt tokens


@dataclass
class EngineConfig:
    max_batch: int = 32
    max_queue: int = 256
    max_new_tokens: int = 1024
    speculate: int = 4       # draft tokens a lone row may verify per step (0 = off)
    prefix_cache: bool = True   # a prompt starting as a free slot's cache did feeds only the rest


class Engine:
    def __init__(self, artifact: Artifact, config: EngineConfig, runtime: Runtime,
                 publish: Callable[[list[tuple[Request, Event]]], None], metrics=None,
                 on_crash: Callable[[BaseException], None] | None = None):
        self.config, self.rt, self.publish, self.metrics, self.on_crash = config, runtime, publish, metrics, on_crash
        mc = artifact.config
        self.tokenizer, self.tokens = artifact.tokenizer, artifact.tokens
        self.context, self.eos, self.vocab = mc.context_length, mc.eos_token_id, mc.vocab_size
        self.inbox: queue.Queue[list[Request]] = queue.Queue(maxsize=config.max_queue)   # the hand-over
        # ---- the engine thread's ----
        self.table = SlotTable(min(config.max_batch, runtime.slots), self.context)
        self.penalties = Penalties(len(self.table.owner), mc.vocab_size, mc.eos_token_id)
        self.grammars = Grammars(self.tokenizer, mc.vocab_size, mc.eos_token_id)   # structured output
        self.admitting: list[list[Request]] = []    # taken from the inbox, not yet in slots: a
                                                    # request's n choices join together
        self.outbox: list[tuple[Request, Event]] = []
        self.crashed: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shelley-engine", daemon=True)

    # ---- called from the front end's thread ----------------------------------------------
    def submit(self, prompt: str, params: SamplingParams, sink=None, param: str = "prompt") -> Request:
        """Validate and queue a request; its events go to `publish` with `req.sink` set. With
        n > 1 the n choices (`req.choices`, seeds seed, seed+1, ...) share the sink and are
        queued as one. `param` names what the prompt came from (a chat's is "messages")."""
        self.validate(params)
        ids = self.encode(prompt, param, params.truncate_prompt_tokens)
        seeds = [params.seed] * params.n if params.seed is None else [params.seed + i for i in range(params.n)]
        choices = [Request(ids, params if i == 0 else dataclasses.replace(params, seed=seed),
                           self.tokens.stream(), sink, index=i,
                           grammar=self.grammars.state(params.grammar) if params.grammar else None)
                   for i, seed in enumerate(seeds)]
        for r in choices:
            r.choices = choices
        try:
            self.inbox.put_nowait(choices)
        except queue.Full:
            raise QueueFull(f"queue is full ({self.config.max_queue} waiting); retry later") from None
        if self.metrics:
            self.metrics.waiting.set(self.inbox.qsize())
        return choices[0]

    def encode(self, prompt: str, param: str = "prompt", truncate: int | None = None) -> list[int]:
        """The prompt's token ids (an empty prompt starts from end-of-text), within the context
        (serving/engine/limits.py's `check_prompt`: `truncate` keeps the last that many)."""
        check_text(prompt, param)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else [self.eos]
        return check_prompt(ids, self.context, truncate, param)

    def validate(self, p: SamplingParams) -> None:
        """Every limit of a request's parameters (serving/engine/limits.py), for both front doors."""
        check_params(p, self.config.max_new_tokens, self.vocab, len(self.table.owner))

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
        for r in [*(r for g in self.admitting for r in g), *(r for _, r in self.table.active())]:
            self._finish(r, reason)
        self.admitting.clear()
        self._flush()

    def _admit(self) -> None:
        """Waiting requests take free slots and are prefilled into them; a request's n
        choices join together, and in order: one that does not fit yet holds the rest back."""
        if not self.table.running and not self.admitting:
            try:
                self.admitting.append(self.inbox.get(timeout=0.05))  # idle: sleep until work comes
            except queue.Empty:
                return
        need = sum(len(g) for g in self.admitting)
        while need < self.table.free and len(self.admitting) < PREFILL_BATCH:
            try:
                self.admitting.append(self.inbox.get_nowait())
            except queue.Empty:
                break
            need += len(self.admitting[-1])
        if not self.admitting:
            return
        now, live, waiting, room = time.perf_counter(), [], [], self.table.free
        for g in self.admitting:
            if waiting or len(g) > room:
                waiting.append(g)
                continue
            if self.metrics:
                self.metrics.queue_wait.observe(now - g[0].t_submit)
                self.metrics.prompt_tokens.inc(g[0].prompt_tokens)
            if g[0].cancelled:
                for r in g:
                    self._finish(r, Finish.CANCELLED)
            else:
                live.append(g)
                room -= len(g)
        self.admitting = waiting
        if self.metrics:   # still waiting: those in the inbox, and any held back here for slots
            self.metrics.waiting.set(self.inbox.qsize() + len(waiting))
        if live:
            self._join(live)
            self._flush()  # first tokens go out now, not after the next decode step

    def _join(self, groups: list[list[Request]]) -> None:
        """Give each request its slots and prefill them: the first choice's prompt, copied into
        the other choices' slots where the runtime can copy (else each is prefilled). A first
        choice whose prompt begins as a free slot's cache does takes that slot and is fed
        only the rest (the prefix cache)."""
        reqs = [r for g in groups for r in g]
        copy = self.rt.can_copy
        reused = {}
        for g in groups:
            r = g[0]
            if self.config.prefix_cache and copy and r.params.prompt_logprobs is None:
                slot, shared = self.table.longest_prefix(r.ids)
                shared = min(shared, len(r.ids) - 1)     # the last prompt token is fed for its logits
                if shared >= MIN_REUSE:
                    self.table.admit_at(r, slot)
                    reused[slot] = shared
        self.table.admit([r for r in reqs if r.slot < 0])
        for r in reqs:
            self.penalties.admit(r.slot, r.prompt_ids, r.params)
        if self.metrics:
            self.metrics.prefix_queries.inc(sum(len(g[0].ids) for g in groups))
            self.metrics.prefix_hits.inc(sum(reused.values()))
        first = [g[0] for g in groups] if copy else reqs
        self._prefill([r.slot for r in first], [r.ids for r in first],
                      {g[0].slot: [r.slot for r in g[1:]] for g in groups if copy and len(g) > 1}, reused)

    def _prefill(self, slots: list[int], windows: list[list[int]], copies: dict | None = None,
                 reused: dict | None = None) -> None:
        """Prefill each window into its slot (runs of adjacent slots in one call; a slot in
        `reused` already holds that many of its window's tokens and is fed the rest), copy it
        into the slots `copies` names, sample every one of those slots."""
        window_of, copies, reused = dict(zip(slots, windows)), copies or {}, reused or {}
        for s in slots:
            r = self.table.owner[s]
            r.window_start = len(r.ids) - len(window_of[s])
            self.table.state[s] = SlotState.PREFILLING
        for s, shared in reused.items():
            logits = self.rt.extend(s, shared, window_of[s][shared:])[-1:]
            self._started([s], logits, window_of, copies)
        for first, run in SlotTable.runs([s for s in slots if s not in reused]):
            echo = [s for s in run if self.table.owner[s].params.prompt_logprobs is not None
                    and self.table.owner[s].generated == 0]   # at joining, not when sliding
            logits = self.rt.prefill(first, [window_of[s] for s in run], self.eos, all_positions=bool(echo))
            if echo:
                self._prompt_logprobs(run, echo, logits, window_of)
                lengths = np.array([len(window_of[s]) for s in run])
                logits = logits[np.arange(len(run)), lengths - 1]
            self._started(run, logits, window_of, copies)

    def _started(self, run: list[int], logits: np.ndarray, window_of: dict, copies: dict) -> None:
        """Slots whose window is now in their cache: copy it where `copies` says, sample each."""
        lengths = np.array([len(window_of[s]) for s in run])
        sampled, rows = list(run), list(range(len(run)))
        for i, s in enumerate(run):
            self.table.lengths[s] = lengths[i]
            self.table.state[s] = SlotState.GENERATING
            for t in copies.get(s, ()):
                self.rt.copy_prefix(s, t, int(lengths[i]))
                self.table.lengths[t] = lengths[i]
                self.table.state[t] = SlotState.GENERATING
                self.table.owner[t].prompt_lp = self.table.owner[s].prompt_lp
                sampled.append(t)
                rows.append(i)
        self._sample(sampled, logits[rows])

    def _prompt_logprobs(self, run: list[int], echo: list[int], logits: np.ndarray, window_of: dict) -> None:
        """Each echoing request's prompt tokens after the first: their logprobs (raw logits of
        the position before each) and the top alternatives there."""
        for s in echo:
            r, i = self.table.owner[s], run.index(s)
            ids = window_of[s]
            k = r.params.prompt_logprobs
            lp, top, top_lp = token_logprobs(logits[i, : len(ids) - 1], np.asarray(ids[1:], np.int64), k)
            r.prompt_lp = [TokenLogprob(t, float(v), list(zip(a.tolist(), b.tolist())))
                           for t, v, a, b in zip(ids[1:], lp, top, top_lp)]

    def _step(self) -> None:
        """One decode step for every generating row."""
        for _, r in self.table.active():
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
        """A lone row's step with a draft (serving/engine/speculate.py): feed the pending token and
        up to `speculate` drafted ones in one call, then sample each position as a plain step
        would (same sampler, same random draw: the exact acceptance rule, see
        serving/engine/sampling.py), keeping drafted tokens while they equal the sampled ones.
        Without penalties all positions are sampled in one call and the draws of the positions
        not kept are rewound. False when there is no draft (a plain step follows)."""
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
        picks, start = None, r.rng.count
        if not r.params.penalized and r.grammar is None:   # every position in one call; the draws
            picks = sample_batch(logits, [r.params] * len(fed), [r.rng] * len(fed))   # of a rejected tail are rewound
            picked_lp = self._logprobs([r] * len(fed), logits, picks)
        accepted = 0
        for j in range(len(fed)):   # each position as a plain step: penalties, then one draw
            if picks is None:
                row = self.penalties.apply(logits[j:j + 1], [s], [r])
                allowed = self.grammars.masks([r])   # after the tokens accepted so far
                if allowed is not None:
                    row = Grammars.reachable(row, logits[j:j + 1], allowed)
                tok = int(sample_batch(row, [r.params], [r.rng], allowed)[0])
                self.penalties.record([s], np.array([tok]))
                lp = self._logprobs([r], logits[j:j + 1], np.array([tok]))[0]
            else:
                tok, lp = int(picks[j]), picked_lp[j]
                r.rng.count = start + (j + 1 if r.params.temperature > 0 else 0)
            self.table.lengths[s] = cached + j + 1          # the cache holds fed[:j + 1]
            if self._emit(r, tok, lp):
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
        params = [r.params for r in reqs]
        adjusted = self.penalties.apply(logits, slots, reqs)
        allowed = self.grammars.masks(reqs)   # structured output's rows; None when no row asked
        if allowed is not None:
            adjusted = Grammars.reachable(adjusted, logits, allowed)
        tokens = sample_batch(adjusted, params, [r.rng for r in reqs], allowed)
        self.penalties.record(slots, tokens)
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
        if r.grammar is not None and tok != self.eos:
            r.grammar.accept(tok)
        reason, text = check_stop(r, tok, self.eos)
        if reason is None:
            self.outbox.append((r, Event(text, [tok], logprobs=logprobs, index=r.index,
                                         prompt_logprobs=self._take_prompt_lp(r))))
            return False
        sent = [] if tok == self.eos and not r.params.ignore_eos else [tok]   # EOS is not sent
        self._finish(r, reason, text, sent, logprobs if sent else None)
        return True

    @staticmethod
    def _take_prompt_lp(r: Request) -> list[TokenLogprob] | None:
        lp, r.prompt_lp = r.prompt_lp, None
        return lp

    def _finish(self, r: Request, reason: Finish, text: str = "", token_ids: list[int] | None = None,
                logprobs=None) -> None:
        if r.done:
            return
        r.done = True
        if r.slot >= 0 and self.table.owner[r.slot] is r:
            s = r.slot
            self.table.release(s, r.ids[r.window_start:r.window_start + int(self.table.lengths[s])])
        self.outbox.append((r, Event(text, token_ids or [], reason.value, r.prompt_tokens,
                                     r.generated, logprobs, r.index, self._take_prompt_lp(r))))

    def _flush(self) -> None:
        if self.metrics:
            self.metrics.running.set(self.table.running)
        if self.outbox:
            batch, self.outbox = self.outbox, []
            self.publish(batch)
