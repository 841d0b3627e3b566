"""`python -m export --format hf`: transformers loads the directory and computes what we do,
for GPT-2's block (GPT2LMHeadModel) and the modern one (Qwen3ForCausalLM)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SONNETS, untrained_run

from core.errors import UserError
from export.__main__ import main as export_main
from export.hf import HF_FILES
from training.checkpoint import load_run, save_checkpoint
from training.tokenizer import build_tokenizer, encode

transformers = pytest.importorskip("transformers", reason="the dev extra installs transformers")
PROMPT = "When I"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hf_dir(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "tiny"
    assert export_main(["--format", "hf", "--run", str(tiny_run), "--out", str(out)]) == 0
    return out


def test_files(hf_dir):
    assert sorted(p.name for p in hf_dir.iterdir()) == sorted(HF_FILES)
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_layer"] == 2


def test_logits_match_pytorch(hf_dir, tiny_run):
    ours, config, tok = load_run(tiny_run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    text = "Shall I compare thee é"                    # 'é' is outside the vocabulary: bytes
    ids = hf_tok(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == encode(tok, text)
    assert hf_tok.decode(ids[0]) == text
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours(ids)[0], atol=1e-5, rtol=0)


def test_greedy_generate_matches_training_sample(hf_dir, tiny_run):
    new = 24                                          # prompt + new tokens stay inside the context (32)
    proc = subprocess.run([sys.executable, "-m", "training.sample", "--run", str(tiny_run), "--prompt", PROMPT,
                           "--temperature", "0", "--max-new-tokens", str(new)],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    ours = proc.stdout.removesuffix("\n")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = hf_tok(PROMPT, return_tensors="pt").input_ids
    gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                      min_new_tokens=new, do_sample=False)
    assert hf_tok.decode(gen[0]) == ours


def test_bpe_tokenizer_loads_as_a_fast_tokenizer(tmp_path):
    tok = build_tokenizer("bpe", [SONNETS.read_text()], vocab_size=300)
    run = untrained_run(tmp_path / "run", tok, block_size=16, n_layer=1, n_head=2, n_embd=16)
    assert export_main(["--format", "hf", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Then let not winter's ragged hand deface"
    assert hf_tok(text).input_ids == encode(tok, text)
    assert hf_tok.decode(hf_tok(text).input_ids) == text


def test_refuses_bigram_and_existing_dir(tiny_run, hf_dir, tmp_path):
    with pytest.raises(UserError, match="already exists"):
        export_main(["--format", "hf", "--run", str(tiny_run), "--out", str(hf_dir)])
    run = untrained_run(tmp_path / "bigram", build_tokenizer("char", ["abc"]), model="bigram")
    with pytest.raises(UserError, match="a 'bigram' model; the transformers export takes GPT-2's block"):
        export_main(["--format", "hf", "--run", str(run), "--out", str(tmp_path / "out")])
    rung = untrained_run(tmp_path / "rung", build_tokenizer("char", ["abc"]), model="qwen3", mlp="relu2")
    with pytest.raises(UserError, match="a qwen3 ladder rung .*mlp relu2"):
        export_main(["--format", "hf", "--run", str(rung), "--out", str(tmp_path / "out")])


# --- the modern block ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen3_hf(tiny_qwen3_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "qwen3"
    assert export_main(["--format", "hf", "--run", str(tiny_qwen3_run), "--out", str(out)]) == 0
    return out


def test_qwen3_config_and_logits_match_pytorch(qwen3_hf, tiny_qwen3_run):
    ours, mc, tok = load_run(tiny_qwen3_run)
    config = json.loads((qwen3_hf / "config.json").read_text())
    assert (config["model_type"], config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"],
            config["intermediate_size"], config["rope_theta"], config["tie_word_embeddings"]) == \
        ("qwen3", 2, 1, 16, mc.ffn_hidden, mc.rope_theta, False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(qwen3_hf).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    assert hf.config.rms_norm_eps == mc.norm_eps and hf.config.max_position_embeddings == mc.block_size
    ids = torch.tensor([encode(tok, "Shall I compare thee to a summer")])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours(ids)[0], atol=1e-5, rtol=0)


def test_qwen3_greedy_equals_onnx_runtime(qwen3_hf, tiny_qwen3_run, tmp_path):
    """transformers' greedy generate (its own KV cache) against the serving runtime's."""
    from core.artifact import load_artifact
    from export.verify import ort_greedy
    from serving.engine.runtime import Runtime

    art = tmp_path / "art"
    assert export_main(["--run", str(tiny_qwen3_run), "--out", str(art)]) == 0
    rt = Runtime(load_artifact(art), device="cpu", threads=1, precision="fp32", slots=1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(qwen3_hf).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(qwen3_hf)
    ids = hf_tok(PROMPT, return_tensors="pt").input_ids
    new = 32 - ids.shape[1]                           # up to the context: no sliding on either side
    gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                      do_sample=False)
    assert gen[0, ids.shape[1]:].tolist() == ort_greedy(rt, ids[0].tolist(), new)


def test_qwen3_tied_with_another_rotary_base(tmp_path):
    """The other settings the config carries: a tied head (not stored), two KV heads for four
    query heads, rotary base 500, norm epsilon 1e-5."""
    tok = build_tokenizer("char", [SONNETS.read_text()])
    run = untrained_run(tmp_path / "run", tok, model="qwen3", block_size=16, n_layer=1, n_head=4, n_kv_head=2,
                        n_embd=32, rope_theta=500.0, norm_eps=1e-5)
    ours, mc, _ = load_run(run)
    with torch.no_grad():                             # init's tiny weights hardly attend: make positions count
        for w in ours.parameters():
            w.mul_(4.0)
    save_checkpoint(run / "ckpt.pt", {"model_config": mc.to_dict(), "model": ours.state_dict()})
    assert export_main(["--format", "hf", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert (hf.config.rope_parameters["rope_theta"], hf.config.rms_norm_eps, hf.config.num_key_value_heads) == \
        (500.0, 1e-5, 2)
    from safetensors import safe_open
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
    ids = torch.tensor([encode(tok, "Thou art more lovely")])
    with torch.no_grad():
        got, want = hf(ids).logits, ours(ids)[0]
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()     # logits of ~20 here: relative
