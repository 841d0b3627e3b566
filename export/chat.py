"""The chat template an export writes: the run's, or the one `--chat-template FILE` gives.

    add_chat_flags(parser)                                   # --chat-template FILE, --chat-stop STR
    chat = resolve_chat(run_dir, template_file=None, stop=None)   # core.chat.ChatTemplate

Training records the template found in the corpus in the run dir (training/chat_form.py);
export copies it into the artifact (`chat_template.json`) and `--format hf` writes it as
`tokenizer_config.json`'s `chat_template`. A run trained before chat templates existed
gets one found now from its corpus (summary.json names it), or the prose form when the
corpus cannot be read. `--chat-template` replaces the Jinja2 source (checked to parse);
`--chat-stop` (repeatable) replaces the default stop strings.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from core.chat import ChatTemplate, read_chat
from core.errors import UserError
from core.run_dir import read_summary


def add_chat_flags(p) -> None:
    p.add_argument("--chat-template", metavar="FILE",
                   help="a Jinja2 chat template (Hugging Face's convention) instead of the one training found")
    p.add_argument("--chat-stop", metavar="STR", action="append",
                   help="a default stop string for chat replies, instead of the run's (repeatable)")


def _from_corpus(run: Path) -> ChatTemplate:
    from training.chat_form import chat_template
    from training.corpus_cache import Corpus, cached_form

    corpus = None
    try:
        corpus = read_summary(run)["train_config"]["corpus"]
        form = cached_form(Corpus(corpus))     # what training finds, from the same cache
    except (OSError, ValueError, KeyError, TypeError, UserError) as e:
        print(f"warning: {run} has no chat template and its corpus ({corpus}) cannot be read ({e}); "
              "chat uses the prose form. Pass --chat-template FILE for another", file=sys.stderr)
        form = {"style": "prose"}
    return chat_template(form)


def resolve_chat(run: Path, template_file: str | None = None, stop: list[str] | None = None) -> ChatTemplate:
    chat = read_chat(run) or _from_corpus(run)
    if template_file:
        import jinja2

        path = Path(template_file)
        try:
            source = path.read_text(encoding="utf-8")
            jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(source)
        except OSError as e:
            raise UserError(f"cannot read --chat-template {path} ({e.strerror}); give a Jinja2 file") from None
        except UnicodeDecodeError:
            raise UserError(f"--chat-template {path} is not UTF-8 text; convert it with iconv") from None
        except jinja2.TemplateSyntaxError as e:
            raise UserError(f"--chat-template {path} is not valid Jinja2 (line {e.lineno}: {e.message})") from None
        chat = ChatTemplate(source, chat.stop, {**chat.form, "template_from": path.name})
    if stop is not None:
        if not all(stop):
            raise UserError("--chat-stop must not be empty; give the text a reply ends at, e.g. $'\\n\\n'")
        chat = dataclasses.replace(chat, stop=tuple(stop))
    return chat
