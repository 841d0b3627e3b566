"""Shared fixtures: a tiny corpus and a tiny model trained once per test session.

Everything runs on the CPU without the network: the corpus is a few of Shakespeare's
sonnets kept in tests/data, and the model (2 layers, 32 wide) trains in seconds.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny models gain nothing from intra-op threads, and on a 2-core machine the test's
# servers, trainers and clients would fight over them. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = Path(__file__).parent / "data"
SONNETS = DATA / "sonnets.txt"

# The tiny model every stage's tests use: small enough to train in a few seconds.
TINY_TRAIN_ARGS = ["--model", "gpt", "--corpus", str(SONNETS), "--tokenizer", "char", "--n-layer", "2",
                   "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
                   "--max-iters", "60", "--eval-interval", "20", "--eval-iters", "2",
                   "--lr", "3e-3", "--warmup-iters", "5", "--seed", "0", "--sample-tokens", "16",
                   "--device", "cpu"]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep downloads out of the user's cache; tests never reach the network anyway."""
    old = os.environ.get("SHELLEY_CACHE")
    os.environ["SHELLEY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SHELLEY_CACHE", None)
    else:
        os.environ["SHELLEY_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished training run dir: ckpt.pt, last.pt, tokenizer.json, metrics.jsonl,
    summary.json, loss.png. Treat it as read-only; copy it to change it."""
    from training.train import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(TINY_TRAIN_ARGS + ["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def art(tiny_run, tmp_path_factory) -> Path:
    """tiny_run's artifact dir (`python -m export`), exported once for every test that serves
    it. Read-only; a module that needs another export (test_export's) defines its own."""
    from tests.serving_fixtures import cached_artifact
    return cached_artifact(tiny_run, tmp_path_factory)


@pytest.fixture(scope="module")
def live(art):
    """A real server over `art`, gRPC and HTTP on free loopback ports (tests/serving_live.py),
    one per test module. A module that needs other settings defines its own `live`."""
    from tests.serving_live import LiveServer
    server = LiveServer(art, max_new_tokens=20000)
    yield server
    server.close()


def untrained_run(path: Path, tok, **model) -> Path:
    """A run dir holding an untrained model for tokenizer `tok`: ckpt.pt and tokenizer.json,
    enough for the exports. `model` sets ModelConfig's fields (vocab_size is the tokenizer's)."""
    from core.model_config import ModelConfig
    from training.checkpoint import save_checkpoint
    from training.model import build_model

    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), **model)
    save_checkpoint(path / "ckpt.pt", {"model_config": cfg.to_dict(), "model": build_model(cfg).state_dict()})
    return path


@pytest.fixture(scope="module")
def http(live):
    """An HTTP client for the module's `live` server (each serving module defines `live`)."""
    import httpx

    with httpx.Client(base_url=live.base, timeout=60) as c:
        yield c


# The modern block's tiny run: heads of 16 (GroupQueryAttention's rotary needs a multiple of
# 16), one KV head for two query heads, an untied output layer.
TINY_QWEN3_ARGS = TINY_TRAIN_ARGS + ["--model", "qwen3", "--n-kv-head", "1", "--no-tie-embeddings"]


@pytest.fixture(scope="session")
def tiny_qwen3_run(tmp_path_factory) -> Path:
    """`tiny_run`'s corpus and shape with `--model qwen3`: a finished run dir, read-only."""
    from training.train import main

    out = tmp_path_factory.mktemp("runs") / "tiny-qwen3"
    assert main(TINY_QWEN3_ARGS + ["--out", str(out)]) == 0
    return out
