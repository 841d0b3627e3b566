"""Constrained decoding: a request's grammar state, advanced with each accepted token, and
its allowed-token mask applied to the rows that asked.

    grammars = Grammars(artifact.tokenizer, vocab=V, eos=E)   # once per engine: llguidance's tokenizer
    req.grammar = grammars.state(params.grammar)             # per request (InvalidRequest if it is bad)
    allowed = grammars.masks(reqs)                           # per row: a bool [V] mask, or None
    tokens = sample_batch(logits, params, draws, allowed)    # the sampler masks (serving/engine/sampling.py)
    req.grammar.accept(token); req.grammar.done              # after sampling; done: nothing may follow
    steps = Grammars.trace(logits[rows], masks, tokens[rows])   # what the model wanted (rows that asked)

The grammar is llguidance's (JSON Schema, Lark, regex: serving/structured.py writes it from a
request's `response_format` or `tools`), run over the model's own tokenizer (its
tokenizer.json), so the mask is exact for every token, byte-fallback and multi-character
ones alike. Why llguidance (docs/api.md, "Structured output"): it computes each mask lazily
from the grammar's lexer and an Earley parser, with no per-schema compile step, and it knows
more of JSON Schema than outlines-core (which let `"maximum": 150` through as 734320 in our
probe); it needs nothing but its own wheel. Rows without a grammar cost one attribute test.
"""
from __future__ import annotations

from collections.abc import Sequence

import llguidance
import llguidance.numpy
import numpy as np
import tokenizers

from core.errors import InvalidRequest
from core.logprobs import log_softmax, top_k
from serving.engine.requests import GrammarStep

CHECKED = 256   # grammars remembered, validated and compiled (then forgotten all at once)
TRACE_TOP = 5   # a trace's most likely allowed tokens per step


class GrammarState:
    """One request's place in its grammar (an llguidance matcher)."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)   # allowed by the mask it was sampled under

    @property
    def done(self) -> bool:
        """The grammar is complete and can take nothing more (but end-of-text)."""
        return self.matcher.is_stopped()


class Grammars:
    def __init__(self, tokenizer: tokenizers.Tokenizer, vocab: int, eos: int):
        self.vocab = vocab
        self.tokenizer = llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=vocab, eos_token=eos)
        self.words = (vocab + 31) // 32
        self._errors: dict[str, str] = {}   # grammar -> llguidance's error ("" = valid), for check
        self._fresh: dict[str, llguidance.LLMatcher] = {}   # grammar -> its compiled start, for state

    def check(self, grammar: str, param: str) -> None:
        """Refuse a grammar llguidance cannot run (an unsupported JSON Schema feature, a bad
        regex), naming `param`; its message names the feature. Remembered: an application
        sends the same schema again and again, and validating compiles it."""
        error = self._errors.get(grammar)
        if error is None:
            error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
            if len(self._errors) >= CHECKED:
                self._errors.clear()
            self._errors[grammar] = error
        if error:
            raise InvalidRequest(f"{param}: {error.splitlines()[0][:300]}", param=param)

    def state(self, grammar: str, param: str = "response_format") -> GrammarState:
        """A fresh state of `grammar`: a copy of one compiled before (1 us against 0.5 ms to
        compile the bench's schema again)."""
        m = self._fresh.get(grammar)
        if m is None:
            m = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
            if m.is_error():
                raise InvalidRequest(f"{param}: {m.get_error().splitlines()[0][:300]}", param=param)
            if len(self._fresh) >= CHECKED:
                self._fresh.clear()
            self._fresh[grammar] = m
        return GrammarState(m.deep_copy())

    def masks(self, reqs: Sequence) -> list | None:
        """Each row's allowed tokens, for sample_batch's `allowed` (serving/engine/sampling.py):
        a bool [V] mask for a row whose request has a grammar, None for the others; None
        when no row has one (the sampler then does nothing more)."""
        rows = [i for i, r in enumerate(reqs) if r.grammar is not None]
        if not rows:
            return None
        bits = np.zeros((len(rows), self.words), dtype=np.int32)
        # One row after another: llguidance's own thread pool (fill_next_token_bitmask_par) took
        # 1.2-1.5 ms for 8 JSON rows where this loop took 0.16-0.41 ms, on 2 busy cores
        # (/tmp probe, 2026-12-07; bench/structured.py measures the whole step).
        for j, i in enumerate(rows):
            llguidance.numpy.fill_next_token_bitmask(reqs[i].grammar.matcher, bits, j)
        allowed = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :self.vocab].astype(bool)
        out: list = [None] * len(reqs)
        for j, i in enumerate(rows):
            out[i] = allowed[j]
        return out

    @staticmethod
    def reachable(adjusted: np.ndarray, logits: np.ndarray, allowed: list) -> np.ndarray:
        """`adjusted` (the logits after penalties), but a row whose every allowed token the
        penalties banned (logit_bias -100, min_tokens' end-of-text) takes its raw logits:
        the grammar's choice stands, the sampler never meets a row with nothing to draw."""
        dead = [i for i, a in enumerate(allowed) if a is not None and not np.isfinite(adjusted[i, a]).any()]
        if not dead:
            return adjusted
        out = adjusted.copy()
        out[dead] = logits[dead]
        return out

    @staticmethod
    def trace(logits: np.ndarray, allowed: Sequence[np.ndarray], tokens: np.ndarray) -> list[GrammarStep]:
        """For each row, from its raw logits (N, V), its mask and the token it drew: the
        model's own top token and its logprob, whether the mask allowed it, how many tokens
        and how much of the model's probability the mask allowed, and the TRACE_TOP most
        likely of those. Only for the rows whose request asked (`SamplingParams.grammar_trace`):
        one log-softmax over them."""
        logp = log_softmax(logits)                                        # (N, V) float64
        mask = np.stack(allowed)                                          # (N, V) bool
        wanted = logp.argmax(axis=1)
        kept = np.where(mask, logp, -np.inf)
        best = kept.max(axis=1, keepdims=True)                            # finite: a mask allows something
        mass = (best[:, 0] + np.log(np.exp(kept - best).sum(axis=1))).tolist()
        k = min(TRACE_TOP, kept.shape[1])
        top = top_k(kept, k)
        counts = mask.sum(axis=1)
        rows = np.arange(len(logp))
        return [GrammarStep(int(w), float(wl), bool(wa), int(t), float(tl), int(c), m,
                            [(int(i), float(kept[r, i])) for i in top[r, :min(k, c)]])
                for r, w, wl, wa, t, tl, c, m in zip(rows.tolist(), wanted.tolist(), logp[rows, wanted].tolist(),
                                                     mask[rows, wanted].tolist(), tokens.tolist(),
                                                     logp[rows, tokens].tolist(), counts.tolist(), mass)]
