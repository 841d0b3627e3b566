"""Continuous batching over the KV-cache ONNX graph, on one engine thread.

    engine = Engine(artifact, EngineConfig(max_batch=32), Runtime(artifact), publish)
    engine.warmup(); engine.start()
    req = engine.submit("ROMEO:", SamplingParams(...), sink)   # InvalidRequest / QueueFull
    ... publish([(req, Event), ...]) is called from the engine thread ...
    req.cancel()                                          # leaves the batch at the next step

The active rows share one left-padded KV cache ([B, H, P, D] per layer) and attention mask
([B, P]). New requests are prefilled together (left-padded, up to PREFILL_BATCH per step)
and join at a step boundary by padding their caches (or the batch's) on the left; finished
or cancelled rows are dropped and columns that are padding for every row trimmed. A row
whose cache reaches the context re-prefills its newest `window_keep` tokens (positions
from 0), exactly like training/generate.py.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.artifact import Artifact
from serving.errors import InvalidRequest, QueueFull, ShuttingDown
from serving.runtime import Runtime
from serving.sampling import (SamplingParams, TextStream, TokenLogprob, make_rng, sample, split_stop,
                              token_logprobs)

log = logging.getLogger("shelley.engine")
MAX_STOP, MAX_STOP_CHARS = 8, 64
MAX_LOGPROBS = 5
PREFILL_BATCH = 8   # newcomers per step: one prefill call, so running rows wait one call at most


@dataclass
class EngineConfig:
    max_batch: int = 32
    max_queue: int = 256
    max_new_tokens: int = 1024


@dataclass
class Event:
    """One message for the client; finish_reason is set on the last one."""
    text: str
    token_ids: list[int]
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None   # one per token id, when the request asked


class Request:
    def __init__(self, prompt_ids: list[int], params: SamplingParams, tokenizer):
        self.prompt_tokens = len(prompt_ids)
        self.ids = list(prompt_ids)           # prompt + generated: the window re-prefills from it
        self.params = params
        self.rng = make_rng(params.seed)
        self.text = TextStream(tokenizer)
        self.held = ""                        # text that may be the start of a stop string
        self.generated = 0
        self.cached = 0                       # real tokens in this row's KV cache
        self.next_token = 0                   # sampled, not yet fed to the model
        self.cancelled = False
        self.done = False
        self.sink = None                      # the server's per-request queue
        self.t_submit = time.perf_counter()
        self.t_last = 0.0

    def cancel(self) -> None:
        self.cancelled = True                 # read by the engine thread at the next step


class Engine:
    def __init__(self, artifact: Artifact, config: EngineConfig, runtime: Runtime,
                 publish: Callable[[list[tuple[Request, Event]]], None], metrics=None):
        self.art, self.config, self.rt, self.publish, self.metrics = artifact, config, runtime, publish, metrics
        mc = artifact.config
        self.tok = artifact.tokenizer
        self.context, self.keep, self.eos = mc["context_length"], mc["window_keep"], mc["eos_token_id"]
        self.queue: queue.Queue[Request] = queue.Queue(maxsize=config.max_queue)
        self.rows: list[Request] = []
        self.past: list = []                  # 2 * n_layer caches [B, H, P, D] (numpy or OrtValues)
        self.mask = np.zeros((0, 0), np.int64)
        self.outbox: list[tuple[Request, Event]] = []
        self.unfinished: set[Request] = set()   # submitted, no final event yet (for the drain)
        self.accepting = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shelley-engine", daemon=True)

    # ---- called from the server's thread -------------------------------------------------
    def submit(self, prompt: str, params: SamplingParams, sink=None) -> Request:
        """Validate and queue a request; its events go to `publish` with `req.sink` set."""
        if not self.accepting:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        self.validate(params)
        ids = self.tok.encode(prompt, add_special_tokens=False).ids if prompt else [self.eos]
        if len(ids) > self.context:
            raise InvalidRequest(f"prompt is {len(ids)} tokens; the limit is the context length, {self.context}")
        req = Request(ids, params, self.tok)
        req.sink = sink
        self.unfinished.add(req)
        try:
            self.queue.put_nowait(req)
        except queue.Full:
            self.unfinished.discard(req)
            raise QueueFull(f"queue is full ({self.config.max_queue} waiting); retry later") from None
        if self.metrics:
            self.metrics.waiting.set(self.queue.qsize())
        return req

    def validate(self, p: SamplingParams) -> None:
        limit = self.config.max_new_tokens
        if not 1 <= p.max_tokens <= limit:
            raise InvalidRequest(f"max_tokens must be between 1 and {limit}, got {p.max_tokens}")
        if not p.temperature >= 0:
            raise InvalidRequest(f"temperature must be >= 0, got {p.temperature}")
        if not 0 < p.top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {p.top_p}")
        if p.top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0, got {p.top_k}")
        if len(p.stop) > MAX_STOP:
            raise InvalidRequest(f"stop has {len(p.stop)} strings; the limit is {MAX_STOP}")
        for s in p.stop:
            if not s or len(s) > MAX_STOP_CHARS:
                raise InvalidRequest(f"stop strings must be 1 to {MAX_STOP_CHARS} characters, got {len(s)}")
        if p.logprobs is not None and not 0 <= p.logprobs <= MAX_LOGPROBS:
            raise InvalidRequest(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {p.logprobs}")

    def in_flight(self) -> int:
        return len(self.unfinished)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.accepting = False
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def warmup(self) -> None:
        """Prefill and decode once at batch 1 and 2, so the first request pays no setup."""
        for n in (1, 2):
            ids = np.full((n, 4), self.eos, np.int64)
            _, past = self.rt.run(ids, np.ones((n, 4), np.int64), np.tile(np.arange(4), (n, 1)),
                                  self.rt.empty_past(n))
            self.rt.run(ids[:, :1], np.ones((n, 5), np.int64), np.full((n, 1), 4, np.int64), past)

    # ---- the engine thread ---------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._admit()
                if self.rows:
                    self._step()
                self._flush()
        except Exception:  # a bug here must not leave clients hanging forever
            log.exception("engine loop crashed")
            self.accepting = False
        self._drain_queue()
        for r in list(self.unfinished):
            self._finish(r, "cancelled")
        self.rows = []
        self._flush()

    def _drain_queue(self) -> list[Request]:
        out = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                return out

    def _admit(self) -> None:
        """Take waiting requests into free rows: prefill each alone, then join the batch."""
        incoming: list[Request] = []
        if not self.rows:
            try:
                incoming.append(self.queue.get(timeout=0.05))  # idle: sleep until work comes
            except queue.Empty:
                return
        while len(self.rows) + len(incoming) < self.config.max_batch and len(incoming) < PREFILL_BATCH:
            try:
                incoming.append(self.queue.get_nowait())
            except queue.Empty:
                break
        if self.metrics:
            self.metrics.waiting.set(self.queue.qsize())
        now = time.perf_counter()
        live = []
        for r in incoming:
            if self.metrics:
                self.metrics.queue_wait.observe(now - r.t_submit)
                self.metrics.prompt_tokens.inc(r.prompt_tokens)
            if r.cancelled:
                self._finish(r, "cancelled")
            else:
                live.append(r)
        if live:
            self._join(self._prefill(live, [r.ids[-self.context:] for r in live]))
        self._flush()  # first tokens go out now, not after the next decode step

    def _prefill(self, reqs: list[Request], prompts: list[list[int]]) -> list:
        """Run the prompts as one left-padded batch and sample each row's next token.

        Returns (request, its cache rows, its mask row) for the rows that go on decoding.
        """
        n, width = len(reqs), max(len(t) for t in prompts)
        ids = np.full((n, width), self.eos, np.int64)
        mask = np.zeros((n, width), np.int64)
        for i, t in enumerate(prompts):
            ids[i, width - len(t):] = t
            mask[i, width - len(t):] = 1
        pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        logits, past = self.rt.run(ids, mask, pos, self.rt.empty_past(n))
        past = self.rt.to_host(past)
        joiners, full = [], []
        toks = [sample(logits[i, -1], r.params, r.rng) for i, r in enumerate(reqs)]
        lps = self._logprobs(reqs, logits[:, -1], toks)
        for i, (r, t) in enumerate(zip(reqs, prompts)):
            r.cached = len(t)
            if self._accept(r, toks[i], lps[i]):
                continue
            if r.cached >= self.context:   # a prompt as long as the context: slide at once
                full.append(r)
            else:
                joiners.append((r, [a[i] for a in past], mask[i]))
        if full:
            joiners += self._prefill(full, [r.ids[-self.keep:] for r in full])
        return joiners

    def _step(self) -> None:
        """One decode step for every active row."""
        self._drop([i for i, r in enumerate(self.rows) if r.cancelled], "cancelled")
        if not self.rows:
            return
        rows = self.rows
        b = len(rows)
        ids = np.fromiter((r.next_token for r in rows), np.int64, b).reshape(b, 1)
        pos = np.fromiter((r.cached for r in rows), np.int64, b).reshape(b, 1)
        self.mask = np.concatenate([self.mask, np.ones((b, 1), np.int64)], axis=1)
        logits, self.past = self.rt.run(ids, self.mask, pos, self.past)
        logits = logits[:, -1]
        greedy = logits.argmax(-1)
        if self.metrics:
            self.metrics.batch_size.observe(b)
        leaving, sliding = [], []
        toks = [int(greedy[i]) if r.params.temperature <= 0 else sample(logits[i], r.params, r.rng)
                for i, r in enumerate(rows)]
        lps = self._logprobs(rows, logits, toks)
        for i, r in enumerate(rows):
            r.cached += 1
            if self._accept(r, toks[i], lps[i]):
                leaving.append(i)
            elif r.cached >= self.context:
                sliding.append(i)
        slid = [rows[i] for i in sliding]
        self._drop(leaving + sliding, None)
        if slid:
            self._join(self._prefill(slid, [r.ids[-self.keep:] for r in slid]))

    # ---- logprobs: computed once per step, only for the rows that asked ------------------
    @staticmethod
    def _logprobs(rows: list[Request], logits: np.ndarray, toks: list[int]) -> list[TokenLogprob | None]:
        out: list[TokenLogprob | None] = [None] * len(rows)
        asked = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        if not asked:
            return out
        k = max(rows[i].params.logprobs for i in asked)
        lp, top_ids, top_lp = token_logprobs(logits[asked], np.asarray([toks[i] for i in asked]), k)
        for j, i in enumerate(asked):
            kk = rows[i].params.logprobs
            out[i] = TokenLogprob(toks[i], float(lp[j]),
                                  list(zip(top_ids[j, :kk].tolist(), top_lp[j, :kk].tolist())))
        return out

    def _accept(self, r: Request, tok: int, lp: TokenLogprob | None = None) -> bool:
        """Record a sampled token and queue its text; True when the request is finished."""
        r.generated += 1
        now = time.perf_counter()
        if self.metrics:
            self.metrics.generated_tokens.inc()
            if r.generated == 1:
                self.metrics.ttft.observe(now - r.t_submit)
            else:
                self.metrics.inter_token.observe(now - r.t_last)
        r.t_last = now
        if tok == self.eos and not r.params.ignore_eos:
            self._finish(r, "stop", text=r.held)
            return True
        r.ids.append(tok)
        r.next_token = tok
        text, r.held, hit = split_stop(r.held + r.text.step(tok), r.params.stop)
        lps = None if lp is None else [lp]   # the end-of-text token above is never sent: no entry
        if hit:
            self._finish(r, "stop", text=text, token_ids=[tok], logprobs=lps)
            return True
        if r.generated >= r.params.max_tokens:
            self._finish(r, "length", text=text + r.held, token_ids=[tok], logprobs=lps)
            return True
        self.outbox.append((r, Event(text, [tok], logprobs=lps)))
        return False

    def _finish(self, r: Request, reason: str, text: str = "", token_ids: list[int] | None = None,
                logprobs: list[TokenLogprob] | None = None) -> None:
        if r.done:
            return
        r.done = True
        self.unfinished.discard(r)
        self.outbox.append((r, Event(text, token_ids or [], reason, r.prompt_tokens, r.generated,
                                     (logprobs or []) if r.params.logprobs is not None else None)))

    def _drop(self, idx: list[int], reason: str | None) -> None:
        """Remove rows from the batch (finishing them with `reason` if given), trim padding."""
        if not idx:
            return
        gone = set(idx)
        if reason:
            for i in gone:
                self._finish(self.rows[i], reason)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.past, self.mask = [], np.zeros((0, 0), np.int64)
        else:
            mask = self.mask[keep]
            first = int(mask.any(0).argmax())   # leading columns that are padding for every row
            self.mask = mask[:, first:]
            self.past = self.rt.to_device([np.ascontiguousarray(a[keep, :, first:])
                                           for a in self.rt.to_host(self.past)])

    def _join(self, joiners: list) -> None:
        """Add prefilled rows to the batch, left-padding caches to a common length."""
        if not joiners:
            return
        old_past = self.rt.to_host(self.past)
        b0, p0 = len(self.rows), self.mask.shape[1]
        width = max([p0] + [m.shape[0] for _, _, m in joiners])
        total = b0 + len(joiners)
        mask = np.zeros((total, width), np.int64)
        mask[:b0, width - p0:] = self.mask
        for k, (_, _, m) in enumerate(joiners):
            mask[b0 + k, width - m.shape[0]:] = m
        new_past = []
        for j, ref in enumerate(joiners[0][1]):
            a = np.zeros((total, ref.shape[0], width, ref.shape[2]), ref.dtype)   # (B, H, P, D)
            if b0:
                a[:b0, :, width - p0:] = old_past[j]
            for k, (_, rows, _) in enumerate(joiners):
                a[b0 + k, :, width - rows[j].shape[1]:] = rows[j]
            new_past.append(a)
        self.rows = self.rows + [r for r, _, _ in joiners]
        self.mask, self.past = mask, self.rt.to_device(new_past)

    def _flush(self) -> None:
        # Set here, between steps, not in _drop/_join: a row re-prefilling its window is
        # briefly out of the batch but still running.
        if self.metrics:
            self.metrics.running.set(len(self.rows))
        if self.outbox:
            batch, self.outbox = self.outbox, []
            self.publish(batch)
