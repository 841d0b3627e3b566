"""The five sections of the explain report: a picture or two each, and what they mean.

    html = sections.attention(analysis, cfg)     # also steps, lens, saliency, story

Each function returns one <section>; the explanations are written for someone who has just
trained their first GPT and wants to see what it learned.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from core.errors import UserError
from training.explain import figures as fig
from training.explain import introspect as ins
from training.explain.page import colour, esc, gradient_css, img, note, section, tok
from training.run_files import read_metrics

NO_ATTENTION = ("This run is a <b>bigram</b> model: each next token depends on the current "
                "token alone, through one lookup table. It has no attention and no layers, so "
                "there is nothing inside to show here; explain a GPT run to see this section.")


def attention(a, cfg) -> str:
    intro = ("Each token builds its next-token guess from a weighted mix of the tokens before "
             "it; the weights are the <b>attention</b>. In a heatmap, row = the token doing the "
             "looking, column = the token it looks at, and each row sums to 1. The grey upper "
             "triangle is the future, which a GPT may never see. Heads tend to specialise: some "
             "look at the previous token, some at the start, some at the last space or line break.")
    if a.trace is None:
        return section("attention", "1 · Attention maps", intro, note(NO_ATTENTION))
    labels = [a.label(i) for i in a.ids]
    group = a.trace.kv_group
    if group > 1:
        intro += (f" This model shares each key/value head among {group} query heads (grouped-query "
                  "attention): heads with the same KV number read the same keys and values, yet "
                  "each asks its own question, so their maps may still differ.")
    body = [f"<h3>Layer {i + 1}</h3>" + img(fig.attention_layer_png(w, labels, i, group),
                                            f"attention of layer {i + 1}")
            for i, w in enumerate(a.trace.attn)]
    if a.steps:
        every = a.ids + [s.chosen for s in a.steps]
        gif = fig.attention_gif([s.attn_last for s in a.steps],
                                [a.label(i) for i in every[:a.steps[-1].context_len]],
                                len(a.ids), [a.label(s.chosen) for s in a.steps], kv_group=group)
        body.append("<h3>While generating</h3>" + img(
            gif, "attention during generation", "One frame per generated token: where the "
            "newest token (orange box) looks, in every layer (L) and head (H), just before the "
            "model picks the next token.", mime="image/gif"))
    return section("attention", "1 · Attention maps", intro, "".join(body))


def steps(a, cfg) -> str:
    intro = ("At every step the model outputs a probability for every token in its vocabulary; "
             f"then one is <b>sampled</b>. Here are the top candidates at each step (temperature "
             f"{cfg.temperature:g}{f', top-k {cfg.top_k}' if cfg.top_k else ''}); the token "
             "actually picked is orange. A confident model puts most of the mass on one bar; "
             "sampling sometimes picks a lower bar, which is what makes text varied.")
    if not a.steps:
        return section("steps", "2 · Step by step", intro, note("No tokens were generated."))
    k = cfg.show_k
    rows = []
    for s in a.steps:
        top = ins.top_candidates(s.probs, k)
        if s.chosen not in [i for i, _ in top]:  # a long-shot pick: show it as an extra bar
            top.append((s.chosen, float(s.probs[s.chosen])))
        rows.append((s, [(a.label(i), p) for i, p in top]))
    tails = ["".join(a.label(i) for i in (a.ids + [x.chosen for x in a.steps])[:s.context_len])[-12:]
             for s in a.steps]
    chosen = [a.label(s.chosen) for s in a.steps]
    body = [img(fig.step_bars_png([c for _, c in rows], chosen, tails), "top candidates per step")]
    table = ["<table><tr><th>#</th><th>after</th><th>picked</th><th>p</th><th>top candidates</th></tr>"]
    for n, ((s, cands), tail) in enumerate(zip(rows, tails)):
        pills = "".join(f'<span class="pill">{tok(lab, lab == chosen[n])} <small>{p:.0%}</small></span>'
                        for lab, p in cands)
        table.append(f"<tr><td>{n + 1}</td><td>{tok('…' + tail)}</td><td>{tok(chosen[n], True)}</td>"
                     f"<td>{float(s.probs[s.chosen]):.0%}</td><td>{pills}</td></tr>")
    body.append("<h3>The same steps as a table</h3>" + "".join(table) + "</table>")
    temps = sorted(set(cfg.temperatures) | ({cfg.temperature} if cfg.temperature > 0 else set()))
    first = a.steps[0].logits
    names = {int(i): a.label(int(i)) for i in torch.topk(first, min(8, first.numel())).indices}
    body.append("<h3>The effect of temperature</h3><p class=intro>The first step again, with the "
                "logits divided by different temperatures before the softmax. Below 1 the favourite "
                "grows (T→0 is always picking the top token); above 1 the bars flatten and "
                "unlikely tokens get picked more often. Entropy measures that spread.</p>"
                + img(fig.temperature_png(first, names, temps), "first step at several temperatures"))
    return section("steps", "2 · Step by step", intro, "".join(body))


def lens(a, cfg) -> str:
    intro = ("The <b>logit lens</b> stops the model early: after each block it sends the residual "
             "stream straight to the final LayerNorm and output layer, and asks which token would "
             "be predicted if the model ended there. Read a column bottom-up to watch the guess "
             "form; the colour is that guess's probability. Orange boxes mark guesses equal to the "
             "token that really comes next. The last row is the model's actual prediction.")
    if a.lens is None:
        return section("lens", "3 · Logit lens", intro, note(NO_ATTENTION))
    T = len(a.ids)
    start = max(0, T - cfg.lens_positions)
    nxt = torch.tensor(a.ids[1:] + ([a.steps[0].chosen] if a.steps else [-1]))
    probs = a.lens.top_probs[:, start:]
    top_ids = a.lens.top_ids[:, start:]
    labels = [[a.label(int(i)) for i in row] for row in top_ids]
    hits = (top_ids == nxt[start:]).numpy()
    png = fig.logit_lens_png(probs, labels, [a.label(i) for i in a.ids[start:]], hits)
    extra = note(f"Showing the prompt's last {T - start} positions.") if start else ""
    return section("lens", "3 · Logit lens", intro, extra + img(png, "logit lens grid"))


def saliency(a) -> str:
    intro = ("Which prompt tokens mattered for the next prediction? <b>Gradient × input</b> asks "
             "how much the log-probability of the predicted token would change if each token's "
             "embedding (token + position) were nudged, weighted by the embedding itself. Darker "
             "means more influence; hover a token for its share.")
    if a.saliency is None:
        return section("saliency", "4 · Saliency", intro, note(NO_ATTENTION))
    s = a.saliency.cpu().numpy()
    top = s.max() if s.max() > 0 else 1.0
    spans = []
    for i, v in zip(a.ids, s):
        bg, ink = colour(float(v / top))
        spans.append(f'<span style="background:{bg};color:{ink}" title="{v:.1%}">{esc(a.label(i))}</span>')
        if a.label(i).endswith("↵"):
            spans.append("<br>")
    target = a.label(a.saliency_target)
    p = float(torch.softmax(a.trace.logits[-1], -1)[a.saliency_target])
    body = (f'<p>Explaining the prediction {tok(target, True)} ({p:.0%}) after the prompt:</p>'
            f'<div class="saliency">{"".join(spans)}</div>'
            f'<div class="scale">less <i style="background:{gradient_css()}"></i> more influence</div>')
    return section("saliency", "4 · Saliency", intro, body)


def story(cfg, config) -> str:
    intro = ("How this model got here. Loss is the average surprise (in nats) at the true next "
             "token: it starts near ln(vocabulary size), the loss of guessing uniformly, and falls "
             "as the model learns. The gap between train and validation shows memorising; the "
             "bigram baseline, which only sees the current token, shows what context buys.")
    rows = read_metrics(cfg.run)
    bigram = None
    if cfg.bigram_run:
        bigram = read_metrics(cfg.bigram_run)
        if not bigram:
            raise UserError(f"--bigram-run {cfg.bigram_run} has no metrics.jsonl rows; "
                            "point it at a finished bigram training run dir")
    if not rows:
        return section("story", "5 · Training story", intro,
                       note(f"No metrics.jsonl in {esc(str(cfg.run))}: nothing to plot."))
    body = [img(fig.loss_png(rows, bigram, config.vocab_size), "loss curve")]
    facts = []
    last = rows[-1]
    if "val_loss" in last:
        facts.append(f"final validation loss <b>{last['val_loss']:.3f}</b> "
                     f"(perplexity {math.exp(min(last['val_loss'], 50)):.1f})")
    if bigram and "val_loss" in bigram[-1]:
        facts.append(f"bigram baseline <b>{bigram[-1]['val_loss']:.3f}</b>")
    facts.append(f"uniform guessing {np.log(config.vocab_size):.3f}")
    body.append("<p>" + " · ".join(facts) + "</p>")
    samples = [r for r in rows if isinstance(r.get("sample"), str) and r["sample"].strip()]
    if samples:
        early, late = samples[0], samples[-1]
        body.append('<div class="two">' + "".join(
            f"<div><h3>{title} (iteration {r['iter']:,}, val loss {r.get('val_loss', float('nan')):.2f})</h3>"
            f'<pre class="sample">{esc(r["sample"])}</pre></div>'
            for title, r in [("Early sample", early), ("Late sample", late)]) + "</div>")
    return section("story", "5 · Training story", intro, "".join(body))
