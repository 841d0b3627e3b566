"""Find how a corpus writes dialogue, and write the chat template that speaks that way.

    form = find_form(load_corpus("shakespeare"))   # {"style": "speakers", "suffix": ".", "upper": True,
                                                   #  "user": "IAGO", "assistant": "OTHELLO", ...}
    chat = chat_template(form)                     # core.chat.ChatTemplate: Jinja2 source + stop strings
    write_chat(run_dir, chat)                      # training does this once, beside tokenizer.json
    ollama_template(form)                          # the same format in Ollama's Go template (GGUF export)

Why: a base model trained on plays has no chat format, but it has read thousands of
conversations. The honest template renders a chat the way the corpus does, so the model
continues it as a character would. In the default corpus a speech is the speaker's name
and a full stop on a line of its own (`OTHELLO.`; tinyshakespeare-style texts write
`ROMEO:`), the words, then a blank line; stage directions are `[in brackets]`. So a user
message becomes a speech by the user's speaker, a system message a stage direction, the
generation prompt is the assistant's speaker line, and the reply ends where a speech
ends, at the blank line (the default stop). The default speakers are the pair who answer
each other most often in the corpus. A corpus without dialogue (a novel) gets the prose
form: messages are paragraphs, and the model writes the next one. Both templates, Jinja
and Go, are written from one set of literal parts (`speech_parts`), so they cannot drift.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence

from core.chat import TOOL_ANSWER, TOOL_CALL, ChatTemplate

# A speaker line: one to four capitalised words (no digits), then "." or ":", alone on its line.
SPEAKER = re.compile(r"^([A-Z][A-Za-z'&-]*(?: [A-Za-z][A-Za-z'&-]*){0,3})([.:])[ \t]*$")
DIRECTION = re.compile(r"^\[.+\][ \t]*$")
MIN_SHARE = 0.25            # speaker lines must open at least this share of the paragraphs
MIN_SPEECHES = 4
END_OF_SPEECH = "\n\n"      # the corpus ends a speech (and a paragraph) with a blank line


def find_form(docs: Sequence[str]) -> dict:
    """What the corpus's dialogue looks like: `style` "speakers" (with suffix, case, default
    speakers, whether it has bracketed stage directions) or "prose"."""
    suffixes, names, pairs = Counter(), Counter(), Counter()
    paragraphs = directions = 0
    for doc in docs:
        lines = doc.replace("\r\n", "\n").split("\n")
        previous = None
        for i, line in enumerate(lines):
            if DIRECTION.match(line):
                directions += 1
            if not line.strip() or (i and lines[i - 1].strip()):
                continue
            paragraphs += 1
            m = SPEAKER.match(line)
            if not m or i + 1 >= len(lines) or not lines[i + 1].strip():
                continue
            name, suffix = m.groups()
            suffixes[suffix] += 1
            names[name, suffix] += 1
            if previous and previous != name:
                pairs[frozenset((previous, name)), suffix] += 1
            previous = name
    speeches = sum(suffixes.values())
    if speeches < MIN_SPEECHES or speeches < MIN_SHARE * paragraphs:
        return {"style": "prose", "paragraphs": paragraphs, "speeches": speeches}
    suffix = suffixes.most_common(1)[0][0]
    counts = Counter({n: k for (n, s), k in names.items() if s == suffix})
    upper = sum(k for n, k in counts.items() if n.isupper()) >= sum(counts.values()) / 2
    fits = lambda n: n.isupper() == upper   # noqa: E731  speakers written in the corpus's usual case
    talking = [(p, k) for (p, s), k in pairs.most_common() if s == suffix and all(map(fits, p))]
    if talking:
        pair = sorted(talking[0][0], key=lambda n: (counts[n], n))      # the less frequent speaker asks
    else:
        pair = sorted([n for n, _ in counts.most_common() if fits(n)][:2] or ["First", "Second"],
                      key=lambda n: (counts[n], n))
    user, assistant = (pair * 2)[:2]
    return {"style": "speakers", "suffix": suffix, "upper": upper, "directions": directions >= MIN_SPEECHES,
            "user": user, "assistant": assistant, "paragraphs": paragraphs, "speeches": speeches,
            "top_speakers": [n for n, _ in counts.most_common(12) if fits(n)]}


def _lit(s: str) -> str:
    """A string literal both template languages read: Jinja's (Python's and llama.cpp's, whose
    lexer knows \\n but not \\u, so non-ASCII stays as it is) and Go's."""
    return json.dumps(s, ensure_ascii=False)


# The message's text: a string, or OpenAI's list of text parts joined by line breaks; each
# line stripped of spaces, tabs and CRs, blank lines dropped (inside a speech a blank line
# would end it). Written with loops, not `map("trim") | select`, so that llama.cpp's own
# Jinja engine (llama-server --jinja) renders it too, to the same bytes.
_TEXT = """\
{%- set clean = namespace(text="") -%}
{%- for part in ([message.content] if message.content is string else message.content) -%}
{%- for line in (part if part is string else part.text).split("\\n") -%}
{%- set kept = line.strip(" \\t\\r") -%}
{%- if kept and clean.text -%}
{%- set clean.text = clean.text ~ "\\n" ~ kept -%}
{%- elif kept -%}
{%- set clean.text = kept -%}
{%- endif -%}
{%- endfor -%}
{%- endfor -%}
{%- set text = clean.text -%}
"""

# Tools (Hugging Face's `tools` kwarg, OpenAI's shapes): what is at hand, as a direction before
# the conversation; an assistant's calls, a line each after its words; a tool's answer, a
# direction naming the tool. The literal parts are core/chat.py's, which the server's tool
# grammar writes too (serving/tools.py).
_TOOLS = """\
{%%- if tools -%%}
{{- "[Tools at hand: " -}}
{%%- for tool in tools -%%}
{%%- set fn = tool.function if tool.function is defined else tool -%%}
{{- ("; " if not loop.first else "") ~ fn.name ~ (" (" ~ fn.description ~ ")" if fn.description else "") -}}
{%%- endfor -%%}
{{- "]" ~ %(end)s -}}
{%%- endif -%%}
"""
_CALLS = """\
{%%- for call in message.tool_calls -%%}
{%%- set fn = call.function if call.function is defined else call -%%}
{{- ("\\n" if text or not loop.first else "") ~ %(open)s ~ fn.name ~ " " ~ (fn.arguments if fn.arguments is string else fn.arguments | tojson) ~ %(close)s -}}
{%%- endfor -%%}
"""
_ANSWER = """\
{{- %(a0)s ~ (message.name or "the tool") ~ %(a1)s ~ text ~ %(a2)s ~ %(end)s -}}
"""


def _tool_parts(end: str) -> dict:
    a0, a1, a2 = (_lit(x) for x in TOOL_ANSWER)
    return {"end": end, "open": _lit(TOOL_CALL[0]), "close": _lit(TOOL_CALL[1]), "a0": a0, "a1": a1, "a2": a2}


def speech_parts(form: dict) -> dict[str, str]:
    """The literal text of a speakers-form chat, the one source both templates are written
    from: the default speaker lines (in the corpus's case), what goes around a system message,
    and the end of a speech."""
    case = str.upper if form["upper"] else str
    return {"user": case(form["user"]) + form["suffix"] + "\n",
            "assistant": case(form["assistant"]) + form["suffix"] + "\n",
            "suffix": form["suffix"] + "\n",
            "system_open": "[" if form["directions"] else "",
            "system_close": ("]" if form["directions"] else "") + END_OF_SPEECH,
            "end": END_OF_SPEECH}


def _speakers_template(form: dict) -> str:
    case = " | upper" if form["upper"] else ""
    parts = {k: _lit(v) for k, v in speech_parts(form).items()}
    line, end = parts["suffix"], parts["end"]
    user, assistant = _lit(form["user"]), _lit(form["assistant"])
    system = f'{parts["system_open"]} ~ text ~ {parts["system_close"]}'
    tool = _tool_parts(end)
    tools, calls, answer = _TOOLS % tool, _CALLS % tool, _ANSWER % tool
    return f"""\
{{#- shelley chat template, found in the corpus by training/chat_form.py. Each message is a
    speech: the speaker's line ({form["assistant"]}{form["suffix"]}), the words, a blank line.
    A system message is {"a stage direction in [brackets]" if form["directions"] else "a heading line"}. \
The speaker is the message's name, else
    user_name / assistant_name, else {form["user"]} / {form["assistant"]}. The generation prompt is \
the reply's speaker line;
    the reply ends at the blank line that ends a speech. -#}}
{{%- set ns = namespace(reply=assistant_name or {assistant}) -%}}
{tools}{{%- for message in messages -%}}
{_TEXT}{{%- if message.role == "system" -%}}
{{{{- {system} -}}}}
{{%- elif message.role == "tool" -%}}
{answer}{{%- else -%}}
{{%- if message.role == "assistant" -%}}
{{%- set speaker = message.name or assistant_name or {assistant} -%}}
{{%- if message.name and not assistant_name -%}}
{{%- set ns.reply = message.name -%}}
{{%- endif -%}}
{{%- else -%}}
{{%- set speaker = message.name or user_name or {user} -%}}
{{%- endif -%}}
{{{{- speaker{case} ~ {line} ~ text -}}}}
{calls}{{{{- {end} -}}}}
{{%- endif -%}}
{{%- endfor -%}}
{{%- if add_generation_prompt -%}}
{{{{- ns.reply{case} ~ {line} -}}}}
{{%- endif -%}}
"""


def _prose_template() -> str:
    end = _lit(END_OF_SPEECH)
    tool = _tool_parts(end)
    return f"""\
{{#- shelley chat template, prose form (training/chat_form.py found no dialogue in the corpus):
    each message is a paragraph, and the reply is the model's next paragraph, ending at the
    blank line that ends a paragraph. Speakers' names are not written: the corpus has none. -#}}
{_TOOLS % tool}{{%- for message in messages -%}}
{_TEXT}{{%- if message.role == "tool" -%}}
{_ANSWER % tool}{{%- else -%}}
{{{{- text -}}}}
{_CALLS % tool}{{{{- {end} -}}}}
{{%- endif -%}}
{{%- endfor -%}}
"""


def chat_template(form: dict) -> ChatTemplate:
    """The template (Jinja2, Hugging Face's convention) and default stop strings for a form."""
    source = _speakers_template(form) if form.get("style") == "speakers" else _prose_template()
    return ChatTemplate(source, (END_OF_SPEECH,), form)


def ollama_template(form: dict) -> str | None:
    """The same chat format as an Ollama template (Go's text/template over `.Messages`, each
    with `.Role` and `.Content`), written from the same parts as the Jinja one; None for a
    form this module did not write (a --chat-template override). Ollama's messages carry no
    names and its template language no string functions, so the speakers are the defaults
    and the content goes in as sent (the Jinja template also strips lines and drops blank ones)."""
    if form.get("template_from"):
        return None
    if form.get("style") == "prose":
        return '{{- range .Messages }}{{ .Content }}{{ %s }}{{ end }}' % _lit(END_OF_SPEECH)
    if form.get("style") != "speakers" or not {"suffix", "upper", "directions", "user", "assistant"} <= set(form):
        return None
    p = {k: _lit(v) for k, v in speech_parts(form).items()}
    return (f'{{{{- range .Messages }}}}\n'
            f'{{{{- if eq .Role "system" }}}}{{{{ {p["system_open"]} }}}}{{{{ .Content }}}}{{{{ {p["system_close"]} }}}}\n'
            f'{{{{- else if eq .Role "assistant" }}}}{{{{ {p["assistant"]} }}}}{{{{ .Content }}}}{{{{ {p["end"]} }}}}\n'
            f'{{{{- else }}}}{{{{ {p["user"]} }}}}{{{{ .Content }}}}{{{{ {p["end"]} }}}}\n'
            f'{{{{- end }}}}\n'
            f'{{{{- end }}}}{{{{ {p["assistant"]} }}}}')
