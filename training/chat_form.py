"""Find how a corpus writes dialogue, and write the chat template that speaks that way.

    form = find_form(load_corpus("shakespeare"))   # {"style": "speakers", "suffix": ".", "upper": True,
                                                   #  "user": "IAGO", "assistant": "OTHELLO", ...}
    chat = chat_template(form)                     # core.chat.ChatTemplate: Jinja2 source + stop strings
    write_chat(run_dir, chat)                      # training does this once, beside tokenizer.json

Why: a base model trained on plays has no chat format, but it has read thousands of
conversations. The honest template renders a chat the way the corpus does, so the model
continues it as a character would. In the default corpus a speech is the speaker's name
and a full stop on a line of its own (`OTHELLO.`; tinyshakespeare-style texts write
`ROMEO:`), the words, then a blank line; stage directions are `[in brackets]`. So a user
message becomes a speech by the user's speaker, a system message a stage direction, the
generation prompt is the assistant's speaker line, and the reply ends where a speech
ends, at the blank line (the default stop). The default speakers are the pair who answer
each other most often in the corpus. A corpus without dialogue (a novel) gets the prose
form: messages are paragraphs, and the model writes the next one.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence

from core.chat import ChatTemplate

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
    """A Jinja string literal (Jinja reads JSON's escapes)."""
    return json.dumps(s)


# The message's text: a string, or OpenAI's list of text parts joined by line breaks; blank
# lines dropped, since inside a speech a blank line would end it.
_TEXT = """\
{%- if message.content is string -%}
{%- set text = message.content -%}
{%- else -%}
{%- set text = message.content | map(attribute="text") | join("\\n") -%}
{%- endif -%}
{%- set text = text.split("\\n") | map("trim") | select | join("\\n") -%}
"""


def _speakers_template(form: dict) -> str:
    case = " | upper" if form["upper"] else ""
    line = _lit(form["suffix"] + "\n")
    user, assistant = _lit(form["user"]), _lit(form["assistant"])
    system = '"[" ~ text ~ "]\\n\\n"' if form["directions"] else 'text ~ "\\n\\n"'
    return f"""\
{{#- shelley chat template, found in the corpus by training/chat_form.py. Each message is a
    speech: the speaker's line ({form["assistant"]}{form["suffix"]}), the words, a blank line.
    A system message is {"a stage direction in [brackets]" if form["directions"] else "a heading line"}. \
The speaker is the message's name, else
    user_name / assistant_name, else {form["user"]} / {form["assistant"]}. The generation prompt is \
the reply's speaker line;
    the reply ends at the blank line that ends a speech. -#}}
{{%- set ns = namespace(reply=assistant_name or {assistant}) -%}}
{{%- for message in messages -%}}
{_TEXT}{{%- if message.role == "system" -%}}
{{{{- {system} -}}}}
{{%- else -%}}
{{%- if message.role == "assistant" -%}}
{{%- set speaker = message.name or assistant_name or {assistant} -%}}
{{%- if message.name and not assistant_name -%}}
{{%- set ns.reply = message.name -%}}
{{%- endif -%}}
{{%- else -%}}
{{%- set speaker = message.name or user_name or {user} -%}}
{{%- endif -%}}
{{{{- speaker{case} ~ {line} ~ text ~ "\\n\\n" -}}}}
{{%- endif -%}}
{{%- endfor -%}}
{{%- if add_generation_prompt -%}}
{{{{- ns.reply{case} ~ {line} -}}}}
{{%- endif -%}}
"""


def _prose_template() -> str:
    return f"""\
{{#- shelley chat template, prose form (training/chat_form.py found no dialogue in the corpus):
    each message is a paragraph, and the reply is the model's next paragraph, ending at the
    blank line that ends a paragraph. Speakers' names are not written: the corpus has none. -#}}
{{%- for message in messages -%}}
{_TEXT}{{{{- text ~ "\\n\\n" -}}}}
{{%- endfor -%}}
"""


def chat_template(form: dict) -> ChatTemplate:
    """The template (Jinja2, Hugging Face's convention) and default stop strings for a form."""
    source = _speakers_template(form) if form.get("style") == "speakers" else _prose_template()
    return ChatTemplate(source, (END_OF_SPEECH,), form)
