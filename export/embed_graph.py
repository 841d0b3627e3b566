"""The embeddings graph: input_ids -> the final norm's hidden states, a second small graph
beside model.onnx, for the server's /v1/embeddings.

    export_embed(model, "artifacts/default/embed.onnx", opset=17)   # GPT or Qwen3, eval, CPU
    # ONNX Runtime: {"input_ids": (B, T) int64} -> {"last_hidden_state": (B, T, n_embd) float}

Why a second graph rather than an output of model.onnx: the decode graph stays byte for
byte what it was (its inputs, outputs and the in-place cache binding the engine relies on),
so generation cannot slow down or change, and an embeddings request never takes a batch
slot. The cost is the weights once more on disk (the server loads the file only when the
first embeddings request comes). No cache and no mask: attention is causal and rows are
right-padded, so a real token never sees padding, and each row's first L states are those
of its L tokens alone. The states are those the head reads (after the final norm), taken by
a hook on the model's own forward, so the graph is the model's code, not a copy of it.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.artifact import EMBED_INPUT, EMBED_OUTPUT


def final_norm(model: nn.Module) -> nn.Module:
    """The norm whose output the head reads: GPT-2's `ln_f`, Qwen3's `norm`."""
    for name in ("ln_f", "norm"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__} has no final norm (ln_f or norm) to take embeddings from")


class EmbedGraph(nn.Module):
    """input_ids (B, T) -> the final norm's output (B, T, C), through the model's forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._seen: list[torch.Tensor] = []
        self.hook = final_norm(model).register_forward_hook(lambda module, args, out: self._seen.append(out))

    def forward(self, input_ids):
        self._seen.clear()
        # An explicit all-ones mask: the causal mask is then built from the traced shapes (SDPA's
        # is_causal flag would be decided once, at the tracing shape).
        self.model(input_ids, attention_mask=torch.ones_like(input_ids))
        return self._seen[-1]                                                   # (B, T, C)


@contextlib.contextmanager
def _sdpa_without_gqa():
    """While tracing, scaled_dot_product_attention with each key/value head repeated for its
    group of query heads (the same numbers): the TorchScript exporter cannot write SDPA's
    `enable_gqa`, and under tracing the step's head-count comparison is a tensor, not a bool."""
    sdpa = F.scaled_dot_product_attention

    def plain(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, enable_gqa=False, **kw):
        group = int(q.shape[1]) // int(k.shape[1])          # head counts: constants of the model
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=bool(is_causal), **kw)

    F.scaled_dot_product_attention = plain
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


def export_embed(model: nn.Module, path: str | Path, opset: int = 17) -> None:
    """Trace `model` (eval mode, CPU, fp32) into `path`; the head's matmul is unused and dropped."""
    ids = torch.randint(0, model.config.vocab_size, (2, 3))   # sizes > 1 and different: no axis specialised
    graph = EmbedGraph(model).eval()
    with torch.no_grad(), warnings.catch_warnings(), _sdpa_without_gqa():
        warnings.simplefilter("ignore")   # the tracer's notes on Python ints taken from shapes
        torch.onnx.export(graph, (ids,), str(path), dynamo=False, opset_version=opset,
                          input_names=[EMBED_INPUT], output_names=[EMBED_OUTPUT], do_constant_folding=True,
                          dynamic_axes={EMBED_INPUT: {0: "batch", 1: "sequence"},
                                        EMBED_OUTPUT: {0: "batch", 1: "sequence"}})
    graph.hook.remove()
