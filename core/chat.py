"""The chat template a run or an artifact carries: `chat_template.json`, defined once.

    chat = read_chat("runs/default")          # or an artifact dir: the same file, the same reader
    chat.template                             # Jinja2 source, Hugging Face's chat_template convention
    chat.stop                                 # the default stop strings (where the corpus ends a speech)
    chat.form                                 # what training found: the server reads its speakers, gguf its Ollama template
    write_chat(out_dir, chat)                 # training writes it; export copies or overrides it

A base model has no chat format of its own, so the template renders a conversation the way
its corpus writes dialogue (training/chat_form.py finds the form and writes the template);
the server renders it (serving/chat.py), `--format hf` puts it in tokenizer_config.json, and
any other exporter (GGUF's `tokenizer.chat_template`, an Ollama Modelfile's TEMPLATE and
PARAMETER stop) takes `template` and `stop` from here. Torch-free and Jinja-free: this is
only the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.files import atomic_write

CHAT_NAME = "chat_template.json"
# How a chat writes a tool call and a tool's answer, each a line of its own (a stage direction
# in the play-script form): the template renders earlier calls so (training/chat_form.py), and
# the server's grammar makes the model write them so (serving/tools.py).
TOOL_CALL = ("[call ", "]")              # [call get_weather {"city": "Paris"}]
TOOL_ANSWER = ("[", " answers: ", "]")   # [get_weather answers: 21 degrees]


@dataclass(frozen=True)
class ChatTemplate:
    template: str                        # Jinja2: messages, add_generation_prompt, user_name, assistant_name
    stop: tuple[str, ...] = ()           # a reply ends at any of these (the request's own stops add to them)
    form: dict = field(default_factory=dict)   # style, speaker-line suffix, case, default speakers, counts

    def to_json(self) -> str:
        return json.dumps({"chat_template": self.template, "stop": list(self.stop), "form": self.form},
                          indent=2, ensure_ascii=False) + "\n"


def read_chat(path: str | Path) -> ChatTemplate | None:
    """The chat template of a training run dir or a model artifact dir; None when it has none
    (runs and artifacts made before chat templates existed)."""
    f = Path(path) / CHAT_NAME
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
        template, stop = d["chat_template"], d.get("stop", [])
        if not isinstance(template, str) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError("chat_template must be a string and stop a list of non-empty strings")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{f} is not a valid chat template file ({e}); re-run the export") from None
    return ChatTemplate(template, tuple(stop), d.get("form") or {})


def write_chat(path: str | Path, chat: ChatTemplate) -> Path:
    f = Path(path) / CHAT_NAME
    atomic_write(f, chat.to_json().encode("utf-8"))
    return f
