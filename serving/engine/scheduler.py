"""The scheduler: who joins, who leaves and what runs this step, as a typed plan.

    sched = Scheduler(inbox, SlotTable(32, context), SchedulerConfig(), can_copy=True, metrics=None)
    plan = sched.schedule()          # Plan: left (cancelled), joined (slots given), prefills
    ... runner.prefill(plan.prefills) -> sched.started(slots, lengths) ...
    step = sched.decode_step()       # Decode (every generating row), Extend (a lone row's draft) or None
    ... runner, sampler, output processor ...
    sched.fed(slot, token)           # its next token (a full cache queues a re-prefill for the next plan)
    sched.release(req)               # it ended: its slot is free, keeping its cache's ids
    sched.close()                    # every request still here (stop, crash)

Why a part of its own: the decisions (which waiting requests fit, in order and with all
their n choices; which free slot's kept cache a prompt can reuse; who was cancelled; when a
row must slide; whether a lone row verifies a draft) are data in, a plan out, and can be
read and tested without running a model. The scheduler is the one writer of the slot table
(serving/engine/slots.py) and of each request's place in it (`slot`, `window_start`).

A row whose cache fills after a token is not re-prefilled from inside the sampling: its
slot turns PREFILLING and `slides()` hands its newest tokens (core/window.py's rule) back as
a prefill into its own slot: the next plan's, or at once when its prefill filled it (before
that step's decode reads the row). The tokens are the same (each request draws from its own
RNG); only the call they come from moves.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

from core.window import refill
from serving.engine.requests import Request
from serving.engine.runner import Decode, Extend, Prefill
from serving.engine.slots import SlotTable
from serving.engine.speculate import Acceptance, NgramDrafter

PREFILL_BATCH = 8   # newcomers per step, so running rows wait for one short prefill at most
MIN_REUSE = 8       # a free slot's cached tokens are reused from this many shared prompt tokens


@dataclass
class SchedulerConfig:
    speculate: int = 4          # draft tokens a lone row may verify per step (0 = off)
    prefix_cache: bool = True   # a prompt starting as a free slot's cache did feeds only the rest


@dataclass
class Plan:
    """A step's joins and leaves, and the prefills to run before its decode."""
    left: list[Request] = field(default_factory=list)      # cancelled: end them (their slots are free)
    joined: list[Request] = field(default_factory=list)    # in slots now, every choice
    prefills: list[Prefill] = field(default_factory=list)  # joins' prompts, then full rows' windows


class Scheduler:
    def __init__(self, inbox: queue.Queue, table: SlotTable, config: SchedulerConfig, can_copy: bool,
                 metrics=None):
        self.inbox, self.table, self.config, self.can_copy, self.metrics = inbox, table, config, can_copy, metrics
        self.admitting: list[list[Request]] = []   # taken from the inbox, not yet in slots: a
                                                   # request's n choices join together
        self.sliding: dict[int, list[int]] = {}    # slot -> the window to prefill into it again

    def schedule(self, idle_wait: float = 0.05) -> Plan:
        """Cancelled rows leave, waiting requests take free slots (sleeping up to `idle_wait`
        when there is nothing to do), and the prefills this step needs."""
        plan = Plan()
        for s, r in self.table.active():
            if r.cancelled:
                self.release(r)
                plan.left.append(r)
        self._admit(plan, idle_wait)
        plan.prefills += self.slides()
        return plan

    def slides(self) -> list[Prefill]:
        """The rows whose cache filled since the last call: each one's newest tokens, to
        prefill into its own slot again (the loop runs these before any decode reads the row)."""
        out = []
        for s, window in self.sliding.items():
            r = self.table.owner[s]
            r.window_start = len(r.ids) - len(window)
            out.append(Prefill(s, window))
        self.sliding = {}
        return out

    def _admit(self, plan: Plan, idle_wait: float) -> None:
        """Waiting requests take free slots; a request's n choices join together, and in
        order: one that does not fit yet holds the rest back."""
        t = self.table
        if not t.running and not self.admitting:
            try:
                self.admitting.append(self.inbox.get(timeout=idle_wait))  # idle: sleep until work comes
            except queue.Empty:
                return
        need = sum(len(g) for g in self.admitting)
        while need < t.free and len(self.admitting) < PREFILL_BATCH:
            try:
                self.admitting.append(self.inbox.get_nowait())
            except queue.Empty:
                break
            need += len(self.admitting[-1])
        if not self.admitting:
            return
        now, live, waiting, room = time.perf_counter(), [], [], t.free
        for g in self.admitting:
            if waiting or len(g) > room:
                waiting.append(g)
                continue
            if self.metrics:
                self.metrics.queue_wait.observe(now - g[0].t_submit)
                self.metrics.prompt_tokens.inc(g[0].prompt_tokens)
            if g[0].cancelled:
                plan.left.extend(g)
            else:
                live.append(g)
                room -= len(g)
        self.admitting = waiting
        if self.metrics:   # still waiting: those in the inbox, and any held back here for slots
            self.metrics.waiting.set(self.inbox.qsize() + len(waiting))
        if live:
            self._join(plan, live)

    def _join(self, plan: Plan, groups: list[list[Request]]) -> None:
        """Give each request its slots and plan their prefills: the first choice's prompt,
        copied into the other choices' slots where the runtime can copy (else each is
        prefilled). A first choice whose prompt begins as a free slot's cache does takes
        that slot and is fed only the rest (the prefix cache)."""
        t, copy, reused = self.table, self.can_copy, {}
        for g in groups:
            r = g[0]
            if self.config.prefix_cache and copy and r.params.prompt_logprobs is None:
                slot, shared = t.longest_prefix(r.ids)
                shared = min(shared, len(r.ids) - 1)     # the last prompt token is fed for its logits
                if shared >= MIN_REUSE:
                    t.admit_at(r, slot)
                    reused[slot] = r.cached_tokens = shared   # usage's cached_tokens
        reqs = [r for g in groups for r in g]
        t.admit([r for r in reqs if r.slot < 0])
        plan.joined.extend(reqs)
        if self.metrics:
            self.metrics.prefix_queries.inc(sum(len(g[0].ids) for g in groups))
            self.metrics.prefix_hits.inc(sum(reused.values()))
        for g in groups:
            for r in g[:1] if copy else g:
                r.window_start = 0
                copies = tuple(c.slot for c in g[1:]) if copy else ()
                plan.prefills.append(Prefill(r.slot, r.ids, reused.get(r.slot, 0), copies,
                                             r.params.prompt_logprobs))

    def started(self, slots: list[int], lengths: list[int]) -> None:
        """The slots' windows are in their caches: they generate from here."""
        for s, n in zip(slots, lengths):
            self.table.started(s, n)

    def decode_step(self) -> Decode | Extend | None:
        """This step's decode: a lone row verifying a draft of its own text when it has one
        (serving/engine/speculate.py), else one token for every generating row."""
        t = self.table
        slots = t.generating()
        if not slots:
            return None
        if self.config.speculate and t.running == 1:
            step = self._draft(slots[0], t.owner[slots[0]])
            if step:
                return step
        n = slots[-1] + 1
        if self.metrics:
            self.metrics.batch_size.observe(len(slots))
        return Decode(t.tokens[:n], t.lengths[:n], slots)

    def _draft(self, s: int, r: Request) -> Extend | None:
        if r.drafts is None:
            r.drafts, r.acceptance = NgramDrafter(), Acceptance()
        if not r.acceptance.wanted():
            return None
        r.drafts.sync(r.ids)
        cached = int(self.table.lengths[s])
        room = min(self.table.context - cached - 1, r.params.max_tokens - r.generated - 1)
        draft = r.drafts.propose(min(self.config.speculate, room))
        if not draft:
            return None
        return Extend(s, cached, [int(self.table.tokens[s]), *draft], draft)

    def decoded(self, step: Decode) -> None:
        self.table.advance(step.slots)

    def verified(self, slot: int, length: int) -> None:
        """A draft's step: the slot's cache holds `length` tokens (what it kept)."""
        self.table.set_length(slot, length)

    def fed(self, slot: int, token: int) -> None:
        """The token the slot feeds next; a full cache queues its newest tokens for a re-prefill."""
        self.table.fed(slot, token)
        r = self.table.owner[slot]
        window = refill(r.ids, int(self.table.lengths[slot]), self.table.context)
        if window is not None:
            self.table.refilling(slot)
            self.sliding[slot] = window

    def release(self, r: Request) -> None:
        """Free the request's slot, which keeps the ids its cache holds (for the prefix cache)."""
        s = r.slot
        if s >= 0 and self.table.owner[s] is r:
            self.sliding.pop(s, None)
            self.table.release(s, r.ids[r.window_start:r.window_start + int(self.table.lengths[s])])

    def close(self) -> list[Request]:
        """Every request still here, waiting in the inbox, being admitted or in a slot (their
        slots freed): the loop is ending."""
        while True:
            try:
                self.admitting.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        reqs = [*(r for g in self.admitting for r in g), *(r for _, r in self.table.active())]
        for r in reqs:
            self.release(r)
        self.admitting.clear()
        return reqs
