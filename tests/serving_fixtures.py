"""Test helper for the serving tests: the artifact dir of conftest's `tiny_run`, written by
`python -m export` once per session and shared by every serving test module.
"""
from __future__ import annotations

from pathlib import Path

from export.__main__ import main as export_main


def make_artifact(run: Path, out: Path) -> Path:
    assert export_main(["--run", str(run), "--out", str(out), "--force"]) == 0
    return out


def cached_artifact(tiny_run: Path, tmp_path_factory) -> Path:
    """The artifact of conftest's `tiny_run`, exported once per session for every module."""
    art = tmp_path_factory.getbasetemp() / "serving-artifact"
    if not (art / "manifest.json").is_file():
        make_artifact(tiny_run, art)
    return art


def play_artifact(tiny_run: Path, tmp_path_factory) -> Path:
    """The same tiny model exported with the chat template found in tests/data/romeo.txt
    (speaker lines `Romeo.`), as `--chat-template FILE` gives it: once per session."""
    from training.chat_form import chat_template, find_form

    art = tmp_path_factory.getbasetemp() / "serving-play-artifact"
    if not (art / "manifest.json").is_file():
        template = tmp_path_factory.getbasetemp() / "romeo.jinja"
        template.write_text(chat_template(find_form([(Path(__file__).parent / "data" / "romeo.txt").read_text()])).template)
        assert export_main(["--run", str(tiny_run), "--out", str(art), "--force",
                            "--chat-template", str(template)]) == 0
    return art
