"""The engine: continuous batching over the in-place KV cache, on one engine thread, as a loop
over four parts: schedule -> run -> sample -> output.

    engine = Engine(artifact, EngineConfig(max_batch=32), Runtime(artifact, slots=32), publish)
    engine.warmup(); engine.start()
    req = engine.submit("ROMEO:", SamplingParams(...), sink)   # InvalidRequest / QueueFull
    ... publish([(req, Event), ...]) is called from the engine thread ...
    req.cancel()                                                # leaves at the next step
    engine.stop()                                               # every request still here ends

The parts, each a module of its own, readable and tested alone:
- scheduler.py: who joins (free slots, a request's n choices together, the prefix cache),
  who leaves (cancelled), which rows slide, and what runs: a `Plan` of prefills, then a
  `Decode` of every generating row or an `Extend` verifying a lone row's draft. It is the
  one writer of the slot table (slots.py).
- runner.py: runs a plan on the Runtime's slots (prefill, decode, extend, copy for n) and
  returns logits.
- sampler.py: penalties (penalties.py), structured output's masks (grammar.py), one draw
  per row (sampling.py), logprobs.
- output.py: the token's text and event, the end through the one `check_stop`
  (requests.py, with the request and event types), one publish per step.
The loop below only passes results from one part to the next: a step is the plan's
prefills (joins, slides), sampled and published at once (first tokens go out before the
decode), then one decode step, sampled and published.

Threads: `submit` runs on the caller's thread (the server's event loop); it validates,
encodes and hands the request over through the inbox queue, and sets the waiting gauge
(a metric, thread-safe); it touches no engine state. Everything else (the slot table, the
requests' progress, the outbox) belongs to the engine thread. The one field the front end
writes afterwards is `Request.cancelled`, a flag the scheduler reads at its next step. If the loop dies, every request ends with an error at
once and `on_crash` tells the server, which stops serving.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from core.artifact import Artifact
from core.errors import QueueFull
from serving.engine.grammar import Grammars
from serving.engine.limits import check_params, check_prompt, check_text
from serving.engine.output import Output
from serving.engine.requests import Event, Finish, Request, TokenLogprob, check_stop  # noqa: F401 (re-exported)
from serving.engine.runner import Extend, Prefill, Runner
from serving.engine.runtime import Runtime
from serving.engine.sampler import Sampler, prompt_logprobs
from serving.engine.sampling import SamplingParams
from serving.engine.scheduler import Scheduler, SchedulerConfig
from serving.engine.slots import SlotTable

log = logging.getLogger("shelley.engine")


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
        # ---- the engine thread's: the four parts ----
        table = SlotTable(min(config.max_batch, runtime.slots), self.context)
        self.scheduler = Scheduler(self.inbox, table, SchedulerConfig(config.speculate, config.prefix_cache),
                                   runtime.can_copy, metrics)
        self.runner = Runner(runtime, self.eos)
        self.grammars = Grammars(self.tokenizer, mc.vocab_size, self.eos)   # structured output
        self.sampler = Sampler(len(table.owner), mc.vocab_size, self.eos, self.grammars)
        self.output = Output(self.eos, publish, metrics)
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
        self.runner.warmup()

    @property
    def table(self) -> SlotTable:
        """The slot table (the scheduler's; read it, never write it)."""
        return self.scheduler.table

    # ---- the engine thread ---------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._step()
        except BaseException as e:  # a bug here must not leave clients hanging, nor look healthy
            log.exception("engine loop crashed; failing every request")
            self.crashed = e
        self._close(Finish.ERROR if self.crashed else Finish.CANCELLED)
        if self.crashed and self.on_crash:
            self.on_crash(self.crashed)

    def _close(self, reason: Finish) -> None:
        """End every request still here: waiting in the inbox, being admitted, or in a slot."""
        for r in self.scheduler.close():
            self.output.end(r, reason)
        self._flush()

    def _step(self) -> None:
        """schedule -> run -> sample -> output: the plan's prefills, then one decode step."""
        plan = self.scheduler.schedule()
        for r in plan.left:
            self.output.end(r, Finish.CANCELLED)
        for r in plan.joined:
            self.sampler.admit(r.slot, r)
        prefills = plan.prefills
        while prefills:
            self._prefill(prefills)
            prefills = self.scheduler.slides()   # a prompt that filled the context slides now
        if plan.joined or plan.left:
            self._flush()   # first tokens go out now, not after the decode step
        step = self.scheduler.decode_step()
        if isinstance(step, Extend):
            self._verify(step)
        elif step is not None:
            logits = self.runner.decode(step)
            self.scheduler.decoded(step)
            self._sample(step.slots, logits)
        self._flush()

    def _prefill(self, prefills: list[Prefill]) -> None:
        echo = {p.slot: p for p in prefills if p.echo is not None}
        for out in self.runner.prefill(prefills):
            owner = self.table.owner
            for s, full in out.full.items():   # the prompt's own logprobs, sent with its first token
                owner[s].prompt_lp = prompt_logprobs(echo[s].window, full, echo[s].echo)
                for t in echo[s].copies:
                    owner[t].prompt_lp = owner[s].prompt_lp
            self.scheduler.started(out.slots, out.lengths)
            self._sample(out.slots, out.logits)

    def _sample(self, slots: list[int], logits) -> None:
        """Sample each slot's next token; the output processor says whether its request ended."""
        owner = self.table.owner
        reqs = [owner[s] for s in slots]
        tokens, logprobs = self.sampler.sample(slots, reqs, logits)
        if self.metrics:
            self.metrics.generated_tokens.inc(len(reqs))
        for s, r, tok, lp in zip(slots, reqs, tokens.tolist(), logprobs):
            if self.output.token(r, tok, lp):
                self.scheduler.release(r)
            else:
                self.scheduler.fed(s, tok)

    def _verify(self, step: Extend) -> None:
        """A lone row's draft (serving/engine/speculate.py): sample each position of the one
        extension call as a plain step would (same sampler, same random draw: the exact
        acceptance rule, see serving/engine/sampling.py), keeping drafted tokens while they
        equal the sampled ones. Without penalties all positions are sampled in one call and
        the draws of the positions not kept are rewound (without a grammar too: its mask
        depends on the tokens accepted before)."""
        s, cached, draft = step.slot, step.cached, step.draft
        r = self.table.owner[s]
        logits = self.runner.extend(step)
        start, together = r.rng.count, not r.params.penalized and r.grammar is None
        if together:
            picks, picked_lp = self.sampler.sample([s] * len(step.fed), [r] * len(step.fed), logits)
        accepted = 0
        for j in range(len(step.fed)):   # each position as a plain step: penalties, then one draw
            if together:
                tok, lp = int(picks[j]), picked_lp[j]
                self.sampler.rewind(r, start, j + 1)
            else:
                tokens, lps = self.sampler.sample([s], [r], logits[j:j + 1])
                tok, lp = int(tokens[0]), lps[0]
            self.scheduler.verified(s, cached + j + 1)      # the cache holds fed[:j + 1]
            if self.output.token(r, tok, lp):
                self.scheduler.release(r)
                break
            self.scheduler.fed(s, tok)   # the last one may fill the cache: it slides next step
            if j == len(draft) or tok != draft[j]:
                break
            accepted += 1
        r.acceptance.record(len(draft), accepted)
        if self.metrics:
            self.metrics.batch_size.observe(1)
            self.metrics.generated_tokens.inc(j + 1)
            self.metrics.spec_drafted.inc(len(draft))
            self.metrics.spec_accepted.inc(accepted)

    def _flush(self) -> None:
        if self.metrics:
            self.metrics.running.set(self.table.running)
        self.output.flush()
