"""HTML building blocks of the explain report: one self-contained page, no external files.

    html = page("title", header_html, [section("attention", "Attention", intro, body), ...])

Images are inlined as base64 data: URIs and the CSS is inline, so the single .html file
opens offline, can be mailed or attached to an issue, and never breaks a link.
"""
from __future__ import annotations

import base64
import html

import matplotlib

CSS = """
:root { --ink:#1f2d3d; --muted:#5c6b7a; --line:#e3e8ee; --accent:#e8590c; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:linear-gradient(120deg,#1f2d3d,#2f4858); color:#fff; padding:28px 0 22px; }
.wrap { max-width:1180px; margin:0 auto; padding:0 24px; }
h1 { margin:0 0 6px; font-size:28px; letter-spacing:-0.5px; }
h1 small { font-weight:400; opacity:.7; font-size:16px; }
h2 { margin:0 0 4px; font-size:21px; }
h3 { margin:18px 0 6px; font-size:16px; }
nav { margin-top:14px; display:flex; flex-wrap:wrap; gap:8px; }
nav a { color:#fff; text-decoration:none; border:1px solid rgba(255,255,255,.35);
  border-radius:999px; padding:3px 12px; font-size:13px; }
nav a:hover { background:rgba(255,255,255,.15); }
.completion { margin-top:14px; background:rgba(255,255,255,.08); border-radius:8px;
  padding:12px 16px; font:15px/1.5 "SFMono-Regular", Menlo, Consolas, monospace;
  white-space:pre-wrap; word-break:break-word; }
.completion .new { color:#ffb38a; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin-top:14px; }
.card { background:rgba(255,255,255,.1); border-radius:8px; padding:6px 12px; font-size:13px; }
.card b { display:block; font-size:17px; }
section { background:#fff; border:1px solid var(--line); border-radius:12px; margin:22px 0;
  padding:22px 26px; box-shadow:0 1px 2px rgba(0,0,0,.03); }
.intro { color:var(--muted); max-width:860px; margin:4px 0 14px; }
.intro b { color:var(--ink); }
figure { margin:10px 0 16px; }
figure img { max-width:100%; height:auto; display:block; border-radius:6px; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.note { background:#fff4e6; border-left:4px solid var(--accent); padding:8px 12px;
  border-radius:4px; margin:10px 0; font-size:14px; }
table { border-collapse:collapse; font-size:13.5px; width:100%; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; }
.tok { font-family:"SFMono-Regular", Menlo, Consolas, monospace; background:#eef1f4;
  border-radius:4px; padding:0 4px; white-space:pre; }
.tok.pick { background:#ffe8d9; color:#b03f00; font-weight:600; }
.pill { display:inline-block; margin:1px 4px 1px 0; }
.pill small { color:var(--muted); }
.saliency { font:20px/2.1 "SFMono-Regular", Menlo, Consolas, monospace; }
.saliency span { padding:3px 2px; border-radius:3px; white-space:pre; }
.scale { display:flex; align-items:center; gap:8px; font-size:12px; color:var(--muted); }
.scale i { display:inline-block; width:180px; height:10px; border-radius:5px; }
pre.sample { background:var(--bg); border:1px solid var(--line); border-radius:8px;
  padding:10px 14px; white-space:pre-wrap; font-size:13px; max-height:260px; overflow:auto; }
.two { display:grid; grid-template-columns:1fr 1fr; gap:18px; }
@media (max-width:800px) { .two { grid-template-columns:1fr; } }
footer { color:var(--muted); font-size:12.5px; padding:8px 0 40px; }
code { background:#eef1f4; border-radius:4px; padding:1px 5px; font-size:13px; }
"""


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, alt: str, caption: str = "", mime: str = "image/png") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(data, mime)}" alt="{esc(alt)}">{cap}</figure>'


def tok(label: str, pick: bool = False) -> str:
    return f'<span class="tok{" pick" if pick else ""}">{esc(label)}</span>'


def note(text: str) -> str:
    return f'<div class="note">{text}</div>'


def colour(value: float, cmap: str = "YlOrRd") -> tuple[str, str]:
    """(background, text colour) for a value in [0, 1] on a matplotlib colour map."""
    r, g, b, _ = matplotlib.colormaps[cmap](0.05 + 0.9 * min(max(value, 0.0), 1.0))
    light = 0.299 * r + 0.587 * g + 0.114 * b > 0.55
    return matplotlib.colors.to_hex((r, g, b)), "#1f2d3d" if light else "#ffffff"


def gradient_css(cmap: str = "YlOrRd") -> str:
    stops = ", ".join(colour(i / 8, cmap)[0] for i in range(9))
    return f"linear-gradient(90deg, {stops})"


def section(anchor: str, title: str, intro: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2>{esc(title)}</h2>'
            f'<p class="intro">{intro}</p>{body}</section>')


def page(title: str, header: str, sections: list[str], footer: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)}</title><style>{CSS}</style></head><body>'
            f'<header><div class="wrap">{header}</div></header>'
            f'<main class="wrap">{"".join(sections)}</main>'
            f'<footer class="wrap">{footer}</footer></body></html>')
