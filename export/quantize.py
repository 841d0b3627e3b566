"""int8 for CPUs: ONNX Runtime's dynamic quantization of the MatMul weights, kept only if
its quality holds on held-out text.

    q = quantize_int8(art_dir, run_dir, card)  # model.int8.onnx, kept only if q.ok; the caller lists it
    q = int8_quality(art_dir, run_dir)         # Quality(bpc_fp32, bpc_int8, top1_agreement)

Weights become int8 per output channel; activations are quantized per call (dynamic), so
no calibration data is needed. Weights are stored unsigned (U8U8): ONNX Runtime's
signed-weight kernels can saturate on CPUs without AVX-512 VNNI, and the CI machines are
not all the same CPU. Quality is measured on the run's validation split (the last 10% of
its corpus) through the serving runtime itself: bits per character within 1% of fp32, and
the share of positions where both pick the same most likely token.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.artifact import MODEL_FILES, Artifact, ArtifactConfig, read_config
from core.errors import UserError
from core.logprobs import log_softmax
from serving.engine.runtime import Runtime

MAX_BPC_RATIO = 1.01        # int8 bits per character at most 1% above fp32
MIN_TOP1_AGREEMENT = 0.90   # and the same top token at 9 positions in 10 at least
HELD_WINDOWS = 32           # context-long windows of validation text scored


@dataclass
class Quality:
    bpc_fp32: float
    bpc_int8: float
    top1_agreement: float
    tokens: int

    @property
    def ok(self) -> bool:
        return self.bpc_int8 <= self.bpc_fp32 * MAX_BPC_RATIO and self.top1_agreement >= MIN_TOP1_AGREEMENT


def held_text(run: Path, context: int) -> tuple[np.ndarray, float]:
    """(windows (N, context + 1) of validation token ids, characters per token of their targets)."""
    from training.checkpoint import CKPT_NAME, load_checkpoint, load_tokenizer
    from training.corpus_cache import Corpus, cached_ids
    from training.tokenizer import char_counts

    corpus = load_checkpoint(run / CKPT_NAME).get("train_config", {}).get("corpus")
    if not corpus:
        raise UserError(f"{run / CKPT_NAME} does not name its corpus, so int8 quality cannot be "
                        f"measured; export without --quantize")
    tok = load_tokenizer(run)
    val = cached_ids(Corpus(corpus), tok)[1].astype(np.int64)
    n = min(HELD_WINDOWS, (len(val) - 1) // (context + 1))
    starts = np.linspace(0, len(val) - context - 1, n).astype(int)
    windows = np.stack([val[s:s + context + 1] for s in starts])
    return windows, char_counts(tok)[windows[:, 1:]].sum() / windows[:, 1:].size


def score(rt: Runtime, windows: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean next-token loss in nats, top-1 ids (N, context)) over the windows."""
    losses, top1 = [], []
    for w in windows:
        x, y = w[:-1], w[1:]
        logits = rt.forward(x[None], np.arange(len(x))[None], np.array([len(x) - 1]), len(x))[0]
        logp = log_softmax(logits)
        losses.append(-logp[np.arange(len(y)), y].mean())
        top1.append(logits.argmax(1))
    return float(np.mean(losses)), np.stack(top1)


def int8_quality(art: Path, run: Path, config: ArtifactConfig | None = None) -> Quality:
    """The int8 file against fp32 on held-out text. `config` lists both files (default: the
    artifact's model_config.json)."""
    config = config or read_config(art)
    windows, chars_per_token = held_text(run, config.context_length)
    bare = Artifact(path=art, config=config, manifest={}, tokenizer=None)
    loss32, top32 = score(Runtime(bare, device="cpu", threads=1, precision="fp32", slots=1), windows)
    loss8, top8 = score(Runtime(bare, device="cpu", threads=1, precision="int8", slots=1), windows)
    bpc = 1 / math.log(2) / chars_per_token
    return Quality(loss32 * bpc, loss8 * bpc, float((top32 == top8).mean()), top8.size)


def quantize_int8(art: Path, run: Path, card: ArtifactConfig) -> Quality:
    """Write model.int8.onnx next to the fp32 file `card` (the artifact's config, not yet
    written) lists, and keep it if its quality holds; otherwise remove it again. Returns the
    measured quality: the caller lists the file (`quality.ok`) in the config it writes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.onnx_graph import check_runnable
    dst, tmp = art / MODEL_FILES["int8"], art / ".model.int8.onnx.tmp"
    logging.disable(logging.WARNING)   # it advises "pre-processing" for every model
    try:
        # ONNX's shape inference does not know the com.microsoft ops, so outputs downstream
        # of them have no type: they are all float here.
        quantize_dynamic(art / card.files["fp32"], tmp, op_types_to_quantize=["MatMul"],
                         per_channel=True, weight_type=QuantType.QUInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        logging.disable(logging.NOTSET)
        check_runnable(tmp, card.opset)
        os.replace(tmp, dst)
    finally:
        logging.disable(logging.NOTSET)
        tmp.unlink(missing_ok=True)
    quality = int8_quality(art, run, dataclasses.replace(card, files={**card.files, "int8": dst.name}))
    if not quality.ok:
        dst.unlink()
    return quality


def describe(q: Quality) -> str:
    return (f"int8 {q.bpc_int8:.4f} bits/char vs fp32 {q.bpc_fp32:.4f} ({q.bpc_int8 / q.bpc_fp32 - 1:+.2%}, "
            f"limit +{MAX_BPC_RATIO - 1:.0%}); top-1 agreement {q.top1_agreement:.1%} "
            f"(limit {MIN_TOP1_AGREEMENT:.0%}) on {q.tokens} held-out tokens")
