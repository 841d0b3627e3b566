"""Structured output: a request's `response_format` as the grammar its reply must follow.

    grammar = response_grammar(body.get("response_format"), "response_format")   # str | None
    grammar = json_grammar({"type": "object", ...}, "response_format.json_schema.schema")
    Shaper.completion / .chat check it against the tokenizer (serving/engine/grammar.py)

Accepted (OpenAI's first, then the extensions vLLM and llama.cpp's server accept, which
llguidance gives for free):

    {"type": "text"}                                   free text (the same as no response_format)
    {"type": "json_object"}                            any JSON object
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}
    {"type": "regex", "regex": "[0-9]{3}-[0-9]{4}"}    the whole reply matches (Rust regex syntax)
    {"type": "choice", "choice": ["yes", "no"]}        exactly one of these strings
    {"type": "grammar", "grammar": "start: ...", "syntax": "lark" | "gbnf"}   llguidance's Lark, or llama.cpp's GBNF

The grammar is a string in llguidance's formats (a Lark grammar, which embeds JSON schemas
and regexes). JSON is written as json.dumps writes it (`{"a": 1, "b": [true]}`: one space
after `,` and `:`, nothing else): a model that is not trained on JSON would otherwise spend
its tokens on spaces and newlines, a chat's blank-line stop can never cut it, and a tool
call's arguments come out as the chat template renders earlier ones. Types are checked here; what llguidance cannot
run (an unsupported JSON Schema keyword, a look-ahead in a regex) is refused by the Shaper,
naming the field.
"""
from __future__ import annotations

import json
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import gbnf_to_lark

from core.errors import InvalidRequest
from serving.engine.limits import check_text

# JSON as Python's json.dumps writes it (and the chat template's tojson renders a call's
# arguments): ", " and ": ", no other whitespace
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_CHOICES, MAX_PATTERN_CHARS = 256, 16384
FORMATS = ("text", "json_object", "json_schema", "regex", "choice", "grammar")


def json_grammar(schema: Any, param: str) -> str:
    """The grammar of JSON documents valid against `schema` (a JSON Schema object)."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param} must be a JSON Schema object, got {str(schema)[:40]!r}", param=param)
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as e:
        raise InvalidRequest(f"{param} is not a JSON Schema llguidance can read: {str(e)[:200]}", param=param) from None


def _string(fmt: dict, key: str, param: str) -> str:
    value = fmt.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_PATTERN_CHARS:
        raise InvalidRequest(f"{param}.{key} must be a non-empty string of at most {MAX_PATTERN_CHARS} characters",
                             param=f"{param}.{key}")
    check_text(value, f"{param}.{key}")   # a lone surrogate: llguidance would raise UnicodeEncodeError (a 500)
    return value


def response_grammar(fmt: Any, param: str = "response_format") -> str | None:
    """The grammar a `response_format` object asks for; None for free text (absent or "text")."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in FORMATS:
        got = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise InvalidRequest(f"{param}.type must be one of {', '.join(FORMATS)}, got {str(got)[:40]!r}",
                             param=f"{param}.type")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return json_grammar({"type": "object"}, param)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise InvalidRequest(f"{param}.json_schema must be an object with a schema: "
                                 "{\"name\": ..., \"schema\": {...}}", param=f"{param}.json_schema")
        return json_grammar(spec["schema"], f"{param}.json_schema.schema")
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(_string(fmt, "regex", param))
    if kind == "choice":
        return choice_grammar(fmt.get("choice"), f"{param}.choice")
    text = _string(fmt, "grammar", param)
    syntax = fmt.get("syntax", "lark")
    if syntax not in ("lark", "gbnf"):
        raise InvalidRequest(f"{param}.syntax must be lark or gbnf, got {str(syntax)[:40]!r}", param=f"{param}.syntax")
    if syntax == "gbnf":
        try:
            text = gbnf_to_lark(text)
        except Exception as e:   # its parser's own errors: the grammar is the client's
            raise InvalidRequest(f"{param}.grammar is not GBNF llguidance can read: {str(e)[:200]}",
                                 param=f"{param}.grammar") from None
    return llguidance.LLMatcher.grammar_from_lark(text)


def choice_grammar(choices: Any, param: str) -> str:
    if not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES or \
            not all(isinstance(c, str) and c for c in choices):
        raise InvalidRequest(f"{param} must be a list of 1 to {MAX_CHOICES} non-empty strings", param=param)
    for c in choices:
        check_text(c, param)
    return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
