"""Explain one prompt: run the analyses (introspect.py) and lay the report out (figures, page).

    cfg = ExplainConfig(run="runs/default", prompt="ROMEO:")
    model, config, tok = load_run(cfg.run)
    a = analyse(model, config, tok, cfg)
    html = render_html(a, cfg, config)          # one self-contained page
    rows = step_rows(a)                         # what --text prints

The prompt is cut to its newest `max_prompt_tokens` (pictures stay readable) and generation
stops at the context length, so every position keeps its place in every picture.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import UserError
from core.model_config import ModelConfig
from core.run_dir import read_summary
from training.explain import figures as fig
from training.explain import introspect as ins
from training.explain import page, sections
from training.tokenizer import decode, encode, eos_id


@dataclass(frozen=True)
class ExplainConfig:
    run: str
    prompt: str
    out: str | None = None
    max_new_tokens: int = 24
    temperature: float = 0.8
    top_k: int = 0
    seed: int = 0
    bigram_run: str | None = None
    max_prompt_tokens: int = 48
    lens_positions: int = 16          # the logit-lens grid shows the prompt's newest positions
    temperatures: tuple[float, ...] = (0.5, 1.0, 2.0)

    @property
    def show_k(self) -> int:
        """How many candidates the step-by-step view lists."""
        return min(self.top_k, 8) if self.top_k > 0 else 6


@dataclass
class Analysis:
    tok: object                           # the run's tokenizers.Tokenizer
    ids: list[int]                        # the (possibly cut) prompt
    steps: list[ins.Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trace: ins.Trace | None = None        # None for a bigram
    lens: ins.Lens | None = None
    saliency: torch.Tensor | None = None
    saliency_target: int | None = None
    _labels: dict[int, str] = field(default_factory=dict)

    def label(self, i: int) -> str:
        """A token as a tick label: whitespace visible (␣ ↵), long tokens shortened."""
        if i not in self._labels:
            text = decode(self.tok, [i])
            if text == "\ufffd":  # a lone byte of a multi-byte character: name the byte
                text = (self.tok.id_to_token(i) or text).replace("<0x", "0x").rstrip(">")
            self._labels[i] = fig.token_label(text)
        return self._labels[i]

    def text(self, ids: list[int]) -> str:
        return decode(self.tok, ids)


def analyse(model, config: ModelConfig, tok, cfg: ExplainConfig) -> Analysis:
    ids = encode(tok, cfg.prompt)
    if not ids:
        raise UserError("--prompt encodes to no tokens; give some text, e.g. --prompt 'ROMEO:'")
    notes = []
    keep = max(1, min(cfg.max_prompt_tokens, config.block_size - 1))
    if len(ids) > keep:
        notes.append(f"The prompt has {len(ids)} tokens; the report explains its last {keep}.")
        ids = ids[-keep:]
    room = config.block_size - len(ids)
    new = min(cfg.max_new_tokens, room)
    if new < cfg.max_new_tokens:
        notes.append(f"Generating {new} tokens, not {cfg.max_new_tokens}: prompt + generated "
                     f"tokens must fit the context of {config.block_size} tokens.")
    eos = eos_id(tok)
    steps = ins.step_by_step(model, ids, new, cfg.temperature, cfg.top_k, cfg.seed,
                             stop_ids=() if eos is None else (eos,))
    a = Analysis(tok, ids, steps, notes)
    if ins.has_attention(model):
        a.trace = ins.trace_forward(model, ids)
        a.lens = ins.logit_lens(model, a.trace)
        a.saliency, a.saliency_target = ins.saliency(model, ids)
    return a


def context_tail(a: Analysis, step: ins.Step, chars: int = 14) -> str:
    ids = (a.ids + [s.chosen for s in a.steps])[:step.context_len]
    text = "".join(a.label(i) for i in ids[-chars:])
    return text[-chars:]


def step_rows(a: Analysis, k: int) -> list[tuple[int, str, str, float, list[tuple[str, float]]]]:
    """(step, context tail, picked label, its probability, top-k (label, probability))."""
    return [(n + 1, context_tail(a, s), a.label(s.chosen), float(s.probs[s.chosen]),
             [(a.label(i), p) for i, p in ins.top_candidates(s.probs, k)])
            for n, s in enumerate(a.steps)]


def text_table(a: Analysis, k: int) -> str:
    lines = [f"{'step':>4}  {'context':<15} {'picked':<8} {'p':>5}   top candidates"]
    for n, ctx, picked, p, cands in step_rows(a, k):
        top = "  ".join(f"{lab} {q:.0%}" for lab, q in cands)
        lines.append(f"{n:>4}  …{ctx:<14} {picked:<8} {p:>5.0%}   {top}")
    return "\n".join(lines)


def _header(a: Analysis, cfg: ExplainConfig, config: ModelConfig, params: int) -> str:
    summary = read_summary(cfg.run)
    prompt = page.esc(a.text(a.ids))
    new = page.esc(a.text([s.chosen for s in a.steps]))
    heads = config.n_head if config.kv_heads == config.n_head else f"{config.n_head} ({config.kv_heads} KV)"
    cards = [("parameters", f"{params:,}"), ("block", config.model), ("layers", config.n_layer), ("heads", heads),
             ("width", config.n_embd), ("context", config.block_size), ("vocab", config.vocab_size)]
    if config.model == "bigram":
        cards = [("parameters", f"{params:,}"), ("model", "bigram"), ("vocab", config.vocab_size)]
    if "best_val_loss" in summary:
        cards.append(("best val loss", f"{summary['best_val_loss']:.3f}"))
    if "iters" in summary:
        cards.append(("iterations", f"{summary['iters']:,}"))
    nav = "".join(f'<a href="#{k}">{t}</a>' for k, t in
                  [("attention", "Attention"), ("steps", "Step by step"), ("lens", "Logit lens"),
                   ("saliency", "Saliency"), ("story", "Training story")])
    return (f'<h1>Inside the model <small>{page.esc(Path(cfg.run).name)} · '
            f'T={cfg.temperature:g}{f" · top-k {cfg.top_k}" if cfg.top_k else ""} · seed {cfg.seed}</small></h1>'
            f'<div class="completion">{prompt}<span class="new">{new}</span></div>'
            f'<div class="cards">{"".join(f"<div class=card><b>{v}</b>{k}</div>" for k, v in cards)}</div>'
            f'<nav>{nav}</nav>')


def render_html(a: Analysis, cfg: ExplainConfig, config: ModelConfig, params: int) -> str:
    body = [page.note(n) for n in a.notes]
    parts = [sections.attention(a, cfg), sections.steps(a, cfg), sections.lens(a, cfg),
             sections.saliency(a), sections.story(cfg, config)]
    if body:
        parts[0] = "".join(body) + parts[0]
    footer = ("Made with <code>python -m training.explain</code>. Every picture is embedded in "
              "this file: it opens offline and can be shared as it is.")
    return page.page(f"Inside {Path(cfg.run).name}: {cfg.prompt[:40]}",
                     _header(a, cfg, config, params), parts, footer)
