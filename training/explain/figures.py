"""The pictures of the explain report, drawn with matplotlib (Agg) and returned as bytes.

    png = attention_layer_png(trace.attn[0], labels, layer=0)
    gif = attention_gif(steps, labels_all, n_prompt)

Every function takes plain tensors and token labels (see `token_label`) and returns PNG or
GIF bytes, so report.py only embeds them. Whitespace in labels is drawn visibly (␣ ↵ ⇥).
"""
from __future__ import annotations

import io
import warnings

import matplotlib

matplotlib.use("Agg")  # no display: figures are only ever written to bytes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from core.tokens import EOS  # noqa: E402

ACCENT, MUTED, PROMPT_INK, NEW_INK = "#e8590c", "#8ca0b3", "#1f2d3d", "#c2410c"
HEAT = "viridis"      # perceptually uniform, readable in grey, distinct from the accent
plt.rcParams.update({
    "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold",
    "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100,
    "axes.edgecolor": "#9aa5b1", "xtick.color": "#3e4c59", "ytick.color": "#3e4c59",
})
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "\\r"}


def token_label(text: str) -> str:
    """A token's text with whitespace made visible, short enough for a tick label."""
    if text == EOS:
        return "‹eos›"
    # control characters (byte-fallback tokens) have no glyph: spell them as hex
    shown = "".join(VISIBLE.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 32 or ord(ch) == 127 else ch)
                    for ch in text) or "∅"
    return shown if len(shown) <= 12 else shown[:11] + "…"


def _save(fig) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Tokens can be any Unicode; a glyph the font lacks is drawn as a box (the HTML
        # table still shows the real text), so a warning per missing glyph is only noise.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", facecolor="white")  # constrained layout already fits
    return buf.getvalue()


def _png(fig) -> bytes:
    data = _save(fig)
    plt.close(fig)
    return data


def _label_size(n: int) -> float:
    return float(np.clip(260 / max(n, 1), 5.5, 9))


def _heat_cmap():
    # masked cells: the future a token may not look at, or tokens not generated yet
    return plt.get_cmap(HEAT).with_extremes(bad="#eef1f4")


def attention_layer_png(attn: torch.Tensor, labels: list[str], layer: int, kv_group: int = 1) -> bytes:
    """One layer's heads side by side: row = query token, column = the key it attends to.
    With grouped KV heads (kv_group query heads per KV head) each title names its KV head."""
    H, T, _ = attn.shape
    cols = min(H, 4 if T <= 12 else 2)  # long prompts: bigger panels, readable labels
    rows = -(-H // cols)
    side = float(np.clip(0.15 * T + 1.2, 2.6, 5.2))
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.4, side * rows + 0.8),
                             squeeze=False, layout="constrained")
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    fs = _label_size(T)
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.axis("off")
            continue
        image = ax.imshow(np.ma.masked_where(future, attn[h].cpu().numpy()), cmap=_heat_cmap(),
                          vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"layer {layer + 1} · head {h + 1}" + (f" · KV {h // kv_group + 1}" if kv_group > 1 else ""))
        ax.set_xticks(range(T), labels, rotation=90, fontsize=fs)
        ax.set_yticks(range(T), labels, fontsize=fs)
        ax.tick_params(length=0)
        for s in ax.spines.values():
            s.set_visible(False)
        if h % cols == 0:
            ax.set_ylabel("query: the token that is looking")
        if h // cols == rows - 1:
            ax.set_xlabel("key: the token it looks at")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    return _png(fig)


def attention_gif(attn_steps: list[list[torch.Tensor]], labels: list[str], n_prompt: int,
                  chosen: list[str], ms_per_frame: int = 900, kv_group: int = 1) -> bytes:
    """Frame s: where the newest position looks (rows = layer·head) before it predicts token s.

    `attn_steps[s]` is a per-layer list of (H, S_s) rows; `labels` covers the longest S.
    One figure is laid out once and redrawn per frame: layout is the slow part of matplotlib.
    """
    L, H = len(attn_steps[0]), attn_steps[0][0].size(0)
    N = len(labels)
    width = float(np.clip(0.22 * N + 2.5, 6.0, 14.0))
    height = float(np.clip(0.28 * L * H + 2.0, 3.0, 9.0))
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    image = ax.imshow(np.zeros((L * H, N)), cmap=_heat_cmap(), vmin=0, vmax=1,
                      aspect="auto", interpolation="nearest")
    box = ax.add_patch(plt.Rectangle((-0.5, -0.5), 1, L * H, fill=False, ec=ACCENT, lw=2.5))
    kv = (lambda h: f" KV{h // kv_group + 1}") if kv_group > 1 else (lambda h: "")
    ax.set_yticks(range(L * H), [f"L{i // H + 1} H{i % H + 1}{kv(i % H)}" for i in range(L * H)], fontsize=8)
    ax.set_xticks(range(N), labels, rotation=90, fontsize=_label_size(N * 0.8))
    ticks = ax.get_xticklabels()
    for i, tick in enumerate(ticks):
        tick.set_color(NEW_INK if i >= n_prompt else PROMPT_INK)
    for b in range(1, L):
        ax.axhline(b * H - 0.5, color="white", lw=2)
    ax.tick_params(length=0)
    ax.set_xlabel("tokens so far (prompt dark, generated orange)")
    title = ax.set_title(" ", loc="left")
    fig.colorbar(image, ax=ax, shrink=0.8, pad=0.01, label="attention weight")
    frames = []
    for s, per_layer in enumerate(attn_steps):
        S = per_layer[0].size(1)
        grid = np.full((L * H, N), np.nan)
        grid[:, :S] = torch.cat(per_layer).cpu().numpy()                    # (L*H, S)
        image.set_data(np.ma.masked_invalid(grid))
        box.set_x(S - 1.5)
        title.set_text(f"step {s + 1}: the last token ‘{labels[S - 1]}’ looks back …"
                       f" and the model picks ‘{chosen[s]}’")
        png = _save(fig)  # the figure's size is fixed: frames must align
        if s == 0:
            fig.set_layout_engine("none")  # keep the first frame's layout for the rest
        frames.append(Image.open(io.BytesIO(png)).convert("RGB"))
    plt.close(fig)
    out = io.BytesIO()
    durations = [ms_per_frame] * (len(frames) - 1) + [ms_per_frame * 3]  # linger on the end
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:],
                   duration=durations, loop=0, optimize=True)
    return out.getvalue()


def step_bars_png(cands: list[list[tuple[str, float]]], chosen: list[str],
                  contexts: list[str], cols: int = 4) -> bytes:
    """Small multiples: per generated token, its top-k candidates; the picked one in orange."""
    n = len(cands)
    rows = -(-n // cols)
    k = max(len(c) for c in cands)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, (0.24 * k + 0.8) * rows),
                             squeeze=False, layout="constrained")
    for s, ax in enumerate(axes.flat):
        if s >= n:
            ax.axis("off")
            continue
        names = [c[0] for c in cands[s]][::-1]
        probs = [c[1] for c in cands[s]][::-1]
        colours = [ACCENT if name == chosen[s] else MUTED for name in names]
        ax.barh(range(len(names)), probs, color=colours, height=0.75)
        ax.set_yticks(range(len(names)), names, fontsize=9, fontfamily="DejaVu Sans Mono")
        ax.set_xlim(0, 1)
        ax.set_xticks([0, 0.5, 1], ["0", ".5", "1"], fontsize=7)
        ax.tick_params(length=0)
        for y, p in enumerate(probs):
            ax.text(min(p + 0.02, 0.8), y, f"{p:.0%}", va="center", fontsize=7, color="#3e4c59")
        ax.set_title(f"{s + 1}. …{contexts[s]}", fontsize=8.5, loc="left",
                     fontfamily="DejaVu Sans Mono")
    return _png(fig)


def temperature_png(logits: torch.Tensor, names: dict[int, str], temperatures: list[float],
                    k: int = 8) -> bytes:
    """The same prediction at several temperatures: low sharpens, high flattens."""
    order = torch.topk(logits, min(k, logits.numel())).indices
    fig, axes = plt.subplots(1, len(temperatures), figsize=(2.9 * len(temperatures), 0.28 * k + 1.1),
                             sharey=True, layout="constrained")
    for ax, t in zip(np.atleast_1d(axes), temperatures):
        probs = torch.softmax(logits.float() / max(t, 1e-8), -1)
        p = probs[order].numpy()[::-1]
        entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum())
        ax.barh(range(len(p)), p, color=plt.get_cmap("plasma")(0.15 + 0.55 * min(t, 2) / 2), height=0.75)
        ax.set_yticks(range(len(p)), [names[int(i)] for i in order][::-1],
                      fontfamily="DejaVu Sans Mono")
        ax.set_xlim(0, 1)
        ax.tick_params(length=0)
        for y, v in enumerate(p):
            ax.text(min(v + 0.02, 0.8), y, f"{v:.0%}", va="center", fontsize=7)
        ax.set_title(f"T = {t:g}   (entropy {entropy:.2f} nats)", fontsize=9)
    return _png(fig)


def logit_lens_png(top_probs: torch.Tensor, top_labels: list[list[str]], labels: list[str],
                   hits: np.ndarray) -> bytes:
    """Grid of layer x position: the token each layer would predict, coloured by its probability.

    `hits` (rows, T) marks predictions equal to the prompt's actual next token (outlined).
    """
    R, T = top_probs.shape
    fig, ax = plt.subplots(figsize=(float(np.clip(0.55 * T + 2.0, 4.5, 16)), 0.5 * R + 1.6),
                           layout="constrained")
    p = top_probs.cpu().numpy()
    # origin="lower": embeddings at the bottom, the output on top, as the stream flows upwards
    image = ax.imshow(p, cmap=HEAT, vmin=0, vmax=1, aspect="auto", interpolation="nearest",
                      origin="lower")
    for r in range(R):
        for c in range(T):
            ax.text(c, r, top_labels[r][c], ha="center", va="center", fontsize=8,
                    fontfamily="DejaVu Sans Mono", color="black" if p[r, c] > 0.55 else "white",
                    fontweight="bold" if hits[r, c] else "normal")
            if hits[r, c]:
                ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec=ACCENT, lw=2))
    ax.set_yticks(range(R), ["embeddings"] + [f"after block {i}" for i in range(1, R)])
    ax.set_xticks(range(T), labels, fontfamily="DejaVu Sans Mono")
    ax.set_xlabel("input token at each position (the model predicts what comes after it)")
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    fig.colorbar(image, ax=ax, shrink=0.8, label="probability of the top token")
    return _png(fig)


def loss_png(gpt: list[dict], bigram: list[dict] | None, vocab_size: int) -> bytes:
    """Loss against training iteration; the bigram baseline dashed; uniform guessing dotted."""
    fig, ax = plt.subplots(figsize=(8.5, 3.8), layout="constrained")
    it = [r["iter"] for r in gpt]
    if any("train_loss" in r for r in gpt):
        ax.plot(it, [r.get("train_loss") for r in gpt], color="#4c6ef5", lw=1.6, label="GPT train")
    ax.plot(it, [r.get("val_loss") for r in gpt], color=ACCENT, lw=2.2, label="GPT validation")
    if bigram:
        ax.plot([r["iter"] for r in bigram], [r.get("val_loss") for r in bigram],
                color="#495057", lw=1.8, ls="--", label="bigram validation")
    ax.axhline(np.log(vocab_size), color="#adb5bd", ls=":", lw=1.2)
    ax.text(ax.get_xlim()[1], np.log(vocab_size), " uniform guess = ln(vocab)", va="bottom",
            ha="right", fontsize=8, color="#868e96")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return _png(fig)
