"""`python -m export --format gguf` (GPT-2's block and the modern one): the file read back with the gguf package, the Modelfile
read back as Ollama's parser reads it, and the bad input. Running the file in llama.cpp is
`make gguf-test` (tests/gguf_check.py): it needs a compiled llama-server, so not here."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SONNETS, untrained_run

from core.errors import UserError
from export.__main__ import main as export_main
from core.chat import read_chat, write_chat
from export.chat import resolve_chat
from export.gguf import GGUF_NAME, MODELFILE_NAME, export_gguf, gguf_tensor_names, modelfile_value
from training.chat_form import chat_template, find_form, ollama_template
from training.checkpoint import load_run
from training.tokenizer import EOS, build_tokenizer

gguf = pytest.importorskip("gguf", reason="the export extra installs gguf")
ROOT = Path(__file__).resolve().parent.parent
SPM_SPACE = "\u2581"


def fields(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> ReaderTensor) of a GGUF file."""
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items()}, {t.name: t for t in r.tensors}


def unquote(s: str) -> tuple[str, bool]:
    """Ollama's rule: a value in triple or plain double quotes must close; a bare one is itself."""
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs as Ollama's Modelfile parser reads them: its documented format,
    with the rules of ollama/parser/parser.go. `#` starts a comment; a command word
    (case-insensitive; PARAMETER is followed by a name of letters, digits and `_`) and one
    space or tab; the value ends at the first line end where it is complete (bare, or closed
    by the quotes it opened with), trimmed, unquoted, no escapes."""
    commands, i, n = [], 0, len(text)
    while i < n:
        if text[i] in " \t\r\n":
            i += 1
        elif text[i] == "#":
            i = text.find("\n", i) if "\n" in text[i:] else n
        else:
            m = re.match(r"([A-Za-z]+)[ \t]", text[i:])
            assert m and m.group(1).lower() in OLLAMA_COMMANDS, f"not a Modelfile command at {text[i:i + 20]!r}"
            name, i = m.group(1).lower(), i + m.end()
            if name == "parameter":
                m = re.match(r"([A-Za-z0-9_]+)[ \t]", text[i:])
                assert m, f"bad parameter name at {text[i:i + 20]!r}"
                name, i = m.group(1), i + m.end()
            value = ""
            while True:
                end = min((j for j in (text.find("\r", i), text.find("\n", i)) if j >= 0), default=n)
                value += text[i:end]
                unquoted, ok = unquote(value.strip())
                if ok or end == n:
                    break
                value, i = value + text[end], end + 1
            assert ok, f"{name}: a quote is never closed"
            assert all(c.isprintable() or c in "\t\r\n" for c in value), f"{name}: Ollama drops unprintable characters"
            commands.append((name, unquoted))
            i = end
    assert any(name == "from" for name, _ in commands), "no FROM line"
    return commands


OLLAMA_COMMANDS = {"from", "parameter", "template", "system", "adapter", "license", "message",
                   "requires", "renderer", "parser", "draft"}
# Ollama's documented parameters and their types (docs/modelfile.md, "Valid Parameters and Values")
OLLAMA_PARAMETERS = {"num_ctx": int, "repeat_last_n": int, "repeat_penalty": float, "temperature": float,
                     "seed": int, "stop": str, "num_predict": int, "top_k": int, "top_p": float, "min_p": float}


def check_modelfile(text: str) -> dict[str, list[str]]:
    commands = parse_modelfile(text)
    out: dict[str, list[str]] = {}
    for name, value in commands:
        if name not in ("from", "template", "system"):
            assert name in OLLAMA_PARAMETERS, f"{name} is not one of Ollama's parameters"
            OLLAMA_PARAMETERS[name](value)              # ValueError if Ollama could not read it
        out.setdefault(name, []).append(value)
    return out


@pytest.fixture(scope="module")
def char_gguf(tiny_run, tmp_path_factory) -> Path:
    """The tiny run (sonnets: the prose chat form) exported by the command."""
    out = tmp_path_factory.mktemp("gguf") / "tiny"
    assert export_main(["--format", "gguf", "--run", str(tiny_run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    """A run without chat_template.json, as runs trained before chat templates are."""
    return untrained_run(tmp_path_factory.mktemp("plain") / "run", build_tokenizer("char", [SONNETS.read_text()]),
                         block_size=16, n_layer=1, n_head=2, n_embd=16)


def test_metadata_and_tensors(char_gguf, tiny_run):
    model, mc, _ = load_run(tiny_run)
    meta, tensors = fields(char_gguf / GGUF_NAME)
    assert meta["general.architecture"] == "gpt2" and meta["general.file_type"] == 0
    assert (meta["gpt2.context_length"], meta["gpt2.embedding_length"], meta["gpt2.block_count"],
            meta["gpt2.attention.head_count"], meta["gpt2.feed_forward_length"]) == \
        (mc.block_size, mc.n_embd, mc.n_layer, mc.n_head, 4 * mc.n_embd)
    assert meta["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    names = gguf_tensor_names(mc)
    assert set(tensors) == set(names.values()) and "output.weight" not in tensors   # tied: not stored
    state = model.state_dict()
    for ours, theirs in names.items():
        t = tensors[theirs]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(np.asarray(t.data).reshape(state[ours].shape), state[ours].numpy()), theirs
    assert list(tensors["blk.0.attn_qkv.weight"].shape) == [mc.n_embd, 3 * mc.n_embd]   # GGUF: (in, out)


def test_char_vocabulary_is_sentencepiece_with_byte_fallback(char_gguf, tiny_run):
    _, _, tok = load_run(tiny_run)
    meta, _ = fields(char_gguf / GGUF_NAME)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert meta["tokenizer.ggml.model"] == "llama" and len(tokens) == tok.get_vocab_size()
    assert tokens[tok.token_to_id(" ")] == SPM_SPACE and " " not in tokens
    assert tokens[tok.token_to_id("e")] == "e" and tokens[tok.token_to_id("\n")] == "\n"
    assert types.count(gguf.TokenType.BYTE) == 256 and tokens[types.index(gguf.TokenType.BYTE)] == "<0x00>"
    eos = tok.token_to_id(EOS)
    assert types[eos] == gguf.TokenType.CONTROL and tokens[eos] == EOS
    assert meta["tokenizer.ggml.eos_token_id"] == eos and meta["tokenizer.ggml.bos_token_id"] == eos
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_space_prefix"] is False


def test_a_run_without_a_chat_template_gets_what_the_other_formats_get(plain_run, tmp_path):
    """No chat_template.json and no corpus to find one in: the prose form, as export/chat.py
    gives every format."""
    assert export_main(["--format", "gguf", "--run", str(plain_run), "--out", str(tmp_path)]) == 0
    meta, _ = fields(tmp_path / GGUF_NAME)
    assert meta["tokenizer.chat_template"] == resolve_chat(plain_run).template
    mf = check_modelfile((tmp_path / MODELFILE_NAME).read_text())
    assert mf["from"] == [f"./{GGUF_NAME}"] and ".Messages" in mf["template"][0]
    assert mf["num_ctx"] == ["16"] and mf["stop"] == ["\n\n", EOS]
    assert 0 < float(mf["temperature"][0]) <= 1


def test_chat_template_and_stop_flags_as_for_the_other_formats(plain_run, tmp_path):
    """--chat-template replaces the Jinja source in the file; it has no Go twin, so the
    Modelfile is plain completion and stops at end-of-text (--chat-stop has nothing to stop)."""
    src = tmp_path / "mine.jinja"
    src.write_text("{% for m in messages %}{{ m.content }}\n{% endfor %}")
    assert export_main(["--format", "gguf", "--run", str(plain_run), "--out", str(tmp_path / "out"),
                        "--chat-template", str(src), "--chat-stop", "END"]) == 0
    meta, _ = fields(tmp_path / "out" / GGUF_NAME)
    assert meta["tokenizer.chat_template"] == src.read_text()
    mf = check_modelfile((tmp_path / "out" / MODELFILE_NAME).read_text())
    assert mf["template"] == ["{{ .Prompt }}"] and mf["stop"] == [EOS]
    (tmp_path / "bad.jinja").write_text("{% for %}")
    with pytest.raises(UserError, match="not valid Jinja2"):
        export_main(["--format", "gguf", "--run", str(plain_run), "--out", str(tmp_path / "out2"),
                     "--chat-template", str(tmp_path / "bad.jinja")])


def test_the_runs_chat_template_goes_into_the_file_and_the_modelfile(char_gguf, tiny_run):
    chat = read_chat(tiny_run)                 # what training found in the sonnets: prose
    meta, _ = fields(char_gguf / GGUF_NAME)
    assert meta["tokenizer.chat_template"] == chat.template and "messages" in chat.template
    mf = check_modelfile((char_gguf / MODELFILE_NAME).read_text())
    assert mf["template"] == [ollama_template(chat.form)] and ".Messages" in mf["template"][0]
    assert mf["stop"] == [*chat.stop, EOS] == ["\n\n", EOS]


def test_a_play_script_template_in_the_modelfile(plain_run, tmp_path):
    """The play's Go template holds the speaker lines and the stage direction the Jinja one
    renders (make gguf-test runs both, in llama.cpp's Jinja engine and Go's text/template)."""
    run = tmp_path / "run"
    run.mkdir()
    for f in plain_run.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    form = find_form([(ROOT / "tests" / "data" / "romeo.txt").read_text()])
    write_chat(run, chat_template(form))
    export_gguf(run, tmp_path / "out")
    meta, _ = fields(tmp_path / "out" / GGUF_NAME)
    assert meta["tokenizer.chat_template"] == chat_template(form).template
    template = check_modelfile((tmp_path / "out" / MODELFILE_NAME).read_text())["template"][0]
    user, assistant = (form[k] + form["suffix"] + "\\n" for k in ("user", "assistant"))
    assert template.startswith("{{- range .Messages }}") and template.endswith(f'{{{{ "{assistant}" }}}}')
    for role, opens, closes in (("system", "[", "]\\n\\n"), ("assistant", assistant, "\\n\\n"), (None, user, "\\n\\n")):
        assert f'{{{{ "{opens}" }}}}{{{{ .Content }}}}{{{{ "{closes}" }}}}' in template, role
    assert ollama_template({**form, "template_from": "mine.jinja"}) is None        # an override: no Go twin
    with pytest.raises(ValueError, match="Modelfile"):
        modelfile_value('three """ quotes')


def test_bpe_vocabulary_is_gpt2_with_its_merges_and_q8_0_weights(tmp_path):
    tok = build_tokenizer("bpe", [SONNETS.read_text()], vocab_size=300)
    run = untrained_run(tmp_path / "run", tok, block_size=16, n_layer=1, n_head=2, n_embd=64)
    export_gguf(run, tmp_path / "out", gguf_type="q8_0")
    meta, tensors = fields(tmp_path / "out" / GGUF_NAME)
    spec = json.loads(tok.to_str())
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert meta["tokenizer.ggml.tokens"] == [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in spec["model"]["merges"]]
    assert meta["tokenizer.ggml.token_type"][tok.token_to_id(EOS)] == gguf.TokenType.CONTROL
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    model, _, _ = load_run(run)
    w = model.state_dict()["blocks.0.mlp.fc.weight"].numpy()
    t = tensors["blk.0.ffn_up.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    back = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
    assert np.abs(back - w).max() <= np.abs(w).max() / 127 + 1e-6 < np.abs(w).max()   # int8 per block of 32
    assert tensors["blk.0.ffn_up.bias"].tensor_type == gguf.GGMLQuantizationType.F32


def test_f16_weights_keep_norms_in_f32(tiny_run, tmp_path):
    export_gguf(tiny_run, tmp_path, gguf_type="f16")
    _, tensors = fields(tmp_path / GGUF_NAME)
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_unknown_type_is_one_line_and_exit_2(tiny_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "export", "--format", "gguf", "--run", str(tiny_run),
                           "--out", str(tmp_path / "x"), "--gguf-type", "q4_k"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unknown --gguf-type 'q4_k'; choose one of f32, f16, q8_0"]


def test_bad_runs_and_dirs(tiny_run, char_gguf, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        export_gguf(tmp_path / "missing", tmp_path / "out")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        export_gguf(corrupt, tmp_path / "out")
    with pytest.raises(UserError, match="already exists; pass --force"):
        export_gguf(tiny_run, char_gguf)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write to output dir .*; choose another --out"):
        export_gguf(tiny_run, tmp_path / "file" / "sub")
    bigram = untrained_run(tmp_path / "bigram", build_tokenizer("char", ["abc"]), model="bigram")
    with pytest.raises(UserError, match="a 'bigram' model; the GGUF export .* takes GPT-2's block"):
        export_gguf(bigram, tmp_path / "out")
    rung = untrained_run(tmp_path / "rung", build_tokenizer("char", ["abc"]), model="qwen3", norm="layer")
    with pytest.raises(UserError, match="qwen3 ladder rung"):
        export_gguf(rung, tmp_path / "out")


@pytest.mark.parametrize("tied", [True, False])
def test_qwen3_is_llama_cpps_qwen3_architecture(tmp_path, tied):
    """The modern block: llama.cpp's qwen3 keys, q and k unpermuted (both rotate halves), the
    output layer stored only when untied; q8_0 leaves the head-sized QK-norms in f32."""
    run = untrained_run(tmp_path / "run", build_tokenizer("char", [SONNETS.read_text()]), model="qwen3",
                        block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, tie_embeddings=tied,
                        rope_theta=500.0)
    export_gguf(run, tmp_path / "out", gguf_type="q8_0")
    model, mc, _ = load_run(run)
    meta, tensors = fields(tmp_path / "out" / GGUF_NAME)
    assert meta["general.architecture"] == "qwen3"
    assert {k.removeprefix("qwen3."): v for k, v in meta.items() if k.startswith("qwen3.")} == pytest.approx({
        "context_length": 16, "embedding_length": 32, "block_count": 2, "feed_forward_length": mc.ffn_hidden,
        "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 8,
        "attention.value_length": 8, "rope.dimension_count": 8, "rope.freq_base": 500.0,
        "attention.layer_norm_rms_epsilon": mc.norm_eps})
    names = gguf_tensor_names(mc)
    assert set(tensors) == set(names.values()) and ("output.weight" in tensors) != tied
    state = model.state_dict()
    assert set(names) == set(state)                    # every weight goes in, none is derived
    for ours, theirs in names.items():
        t, w = tensors[theirs], state[ours].numpy()
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            assert w.ndim == 1 and np.array_equal(np.asarray(t.data), w), theirs
        else:
            back = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
            assert np.abs(back - w).max() <= np.abs(w).max() / 127 + 1e-6, theirs
    assert list(tensors["blk.0.attn_k.weight"].shape) == [32, 2 * 8]           # GGUF: (in, out)
    assert tensors["blk.0.attn_q_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_char_corpus_with_the_sentencepiece_space_is_refused(tmp_path):
    run = untrained_run(tmp_path / "run", build_tokenizer("char", [f"a b{SPM_SPACE}c"]),
                        block_size=16, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(UserError, match="U\\+2581"):
        export_gguf(run, tmp_path / "out")


def test_the_modelfile_parser_refuses_what_ollama_refuses():
    assert parse_modelfile('FROM ./m.gguf\nPARAMETER stop """a\n\nb"""\nTEMPLATE {{ .Prompt }}\n') == \
        [("from", "./m.gguf"), ("stop", "a\n\nb"), ("template", "{{ .Prompt }}")]
    for bad, why in (('FROM x\nTEMPLATE """{{ .Prompt }}\n', "never closed"), ("FORM x\n", "not a Modelfile command"),
                     ("PARAMETER temperature 0.8\n", "no FROM"), ("FROM x\nPARAMETER top-k 3\n", "bad parameter")):
        with pytest.raises(AssertionError, match=why):
            parse_modelfile(bad)
