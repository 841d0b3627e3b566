"""The weights every serving benchmark shares, in every runtime's format.

    m = bench_model("trained")     # or "random"; built once, then read from the cache
    m = bench_model("trained", size="87M")   # the other shapes (SIZES): barely trained
    m.run, m.onnx                  # training run dir; ONNX artifact (model.onnx + model.int8.onnx)
    m.gguf["f32"], m.gguf["q8_0"]  # GGUF files for llama.cpp (export --format gguf)
    m.prompts(64, count=200)       # distinct held-out prompts of about 64 tokens

Frankenstein's shape (4 layers, 256 wide, context 256) with byte-level BPE 2000: 3.7M
parameters, the model the issue's figures were taken on. "trained" trains it for a few
minutes on the default corpus (a model whose greedy text is text, so what speculative
decoding drafts from is realistic; random weights fall into loops that would flatter it);
"random" only initialises it (timing depends on the shape alone). Two larger shapes, as
issue 25 measures: "11.5M" (the `gpu` preset's 6 layers x 384, context 256) and "87M" (12
layers x 768, context 1024), both BPE 2000 and trained only a few steps (speed depends on the
shape; a few steps make the logits peaked enough for the int8 export's quality check and
for sampling to behave like a model's). Everything is exported by
the project's own commands, so every server runs the same weights. Kept under
$SHELLEY_CACHE/bench/ (key: the settings and the artifact format), since training costs
minutes.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from core.artifact import FORMAT_VERSION
from core.files import cache_dir
from core.run_dir import CKPT, TOKENIZER

SHAPE = ["--n-layer", "4", "--n-head", "4", "--n-embd", "256", "--block-size", "256", "--dropout", "0"]
TOKENIZER_ARGS = ["--corpus", "shakespeare", "--tokenizer", "bpe", "--vocab-size", "2000"]
TRAIN = ["--batch-size", "16", "--max-iters", "300", "--eval-interval", "100", "--eval-iters", "4",
         "--optimizer", "muon", "--seed", "0", "--sample-tokens", "0", "--device", "cpu"]
GGUF_TYPES = ("f32", "q8_0")
# size -> (shape, training) for the larger models; "3.7M" is SHAPE and TRAIN above
SIZES = {
    "11.5M": (["--n-layer", "6", "--n-head", "6", "--n-embd", "384", "--block-size", "256", "--dropout", "0"],
              ["--batch-size", "8", "--max-iters", "60", "--eval-interval", "30", "--eval-iters", "2"]),
    "87M": (["--n-layer", "12", "--n-head", "12", "--n-embd", "768", "--block-size", "1024", "--dropout", "0"],
            ["--batch-size", "2", "--max-iters", "16", "--eval-interval", "8", "--eval-iters", "1"]),
}


@dataclass
class BenchModel:
    run: Path
    onnx: Path
    gguf: dict[str, Path]

    def prompts(self, tokens: int, count: int) -> list[str]:
        """`count` distinct prompts of about `tokens` tokens: windows of the corpus's validation
        text spread evenly over it (decoded from token windows, so they start mid-sentence).
        Windows overlap when count * tokens exceeds the text, but no two start at the same
        token, so they share no prefix: a server's prompt cache (llama-server keeps 8 GiB of
        them in RAM by default) must not turn a bench of distinct prompts into cache hits."""
        from tokenizers import Tokenizer

        from training.corpus_cache import Corpus, cached_ids
        tok = Tokenizer.from_file(str(self.run / TOKENIZER))
        ids = cached_ids(Corpus("shakespeare"), tok)[1].tolist()   # the validation split training encoded
        room = len(ids) - tokens
        if count > room + 1:
            raise ValueError(f"only {room + 1} distinct {tokens}-token prompts in the validation text, not {count}")
        stride = max(1, min(tokens, room // max(1, count - 1)))
        return [tok.decode(ids[i * stride:i * stride + tokens]) for i in range(count)]


def run(cmd: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, *cmd], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def random_run(out: Path) -> None:
    """A run dir holding the initial weights (no training), with the same BPE tokenizer."""
    import torch

    from core.model_config import ModelConfig
    from training.checkpoint import save_checkpoint
    from training.data import load_corpus
    from training.model import GPT
    from training.tokenizer import build_tokenizer
    docs = load_corpus("shakespeare")
    tok = build_tokenizer("bpe", docs, vocab_size=2000)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=4, n_head=4, n_embd=256, block_size=256)
    torch.manual_seed(0)
    out.mkdir(parents=True)
    save_checkpoint(out / CKPT, {"model_config": cfg.to_dict(), "train_config": {"corpus": "shakespeare"},
                                      "model": GPT(cfg).state_dict(), "iter": 0, "best_val_loss": 0.0})
    tok.save(str(out / TOKENIZER))


def bench_model(kind: str = "trained", size: str = "3.7M") -> BenchModel:
    shape, train = (SHAPE, TRAIN) if size == "3.7M" else SIZES[size]
    if size != "3.7M":   # the same optimizer, corpus and seed; fewer, smaller steps
        train = [*TRAIN[TRAIN.index("--optimizer"):], *train]
    settings = {"kind": kind, "shape": shape, "tokenizer": TOKENIZER_ARGS, "train": train, "format": FORMAT_VERSION}
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
    home = cache_dir() / "bench" / f"{kind}-{'' if size == '3.7M' else size + '-'}{key}"
    model = BenchModel(home / "run", home / "onnx", {t: home / f"gguf-{t}" / "model.gguf" for t in GGUF_TYPES})
    if (home / "done").is_file():
        return model
    print(f"bench model ({kind}): building {home} once", file=sys.stderr)
    if model.run.exists():   # a build that was interrupted: start over
        subprocess.run(["rm", "-rf", str(home)], check=True)
    if kind == "trained":
        # GPT-2's block, as issue 25's figures and llama.cpp's gpt2 comparisons were measured
        # (cpu-small's own block became qwen3 later; bench/blocks.py compares the two)
        run(["-m", "training.train", "--model", "gpt", *shape, *TOKENIZER_ARGS, *train, "--out", str(model.run)],
            "training")
    elif size == "3.7M":
        random_run(model.run)
    else:
        raise SystemExit(f"random weights are built for the 3.7M shape only; use --model trained for {size}")
    run(["-m", "export", "--run", str(model.run), "--out", str(model.onnx), "--quantize", "int8"], "ONNX export")
    for t, path in model.gguf.items():
        run(["-m", "export", "--format", "gguf", "--run", str(model.run), "--out", str(path.parent),
             "--gguf-type", t], f"GGUF {t} export")
    (home / "done").write_text(json.dumps(settings) + "\n")
    return model
