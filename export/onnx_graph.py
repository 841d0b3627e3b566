"""The ONNX graph: one KV-cache graph for prefill (past length 0) and one-token decode.

    names = graph_names(config.n_layer)                 # input/output names, in order
    export_onnx(model, path, opset=17)                  # the fp32 file
    convert_fp16(path, fp16_path)                       # the same graph in fp16 (for CUDA)

`OnnxGPT` wraps `training.model.GPT` so the traced graph has the flat interface of
DESIGN.md ("ONNX graph with KV cache"): it always passes `attention_mask` and
`position_ids` (so the graph always takes the masked path and left padding works) and
maps the flat `past_key_values.{i}.key/.value` inputs to the model's per-layer (k, v).

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. The dynamo
exporter was tried too (see the export note in the report / README); it needs the extra
`onnxscript` package and specialised the symbolic past length, so the old one it is.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from training.model import GPT, build_attention_mask

MIN_OPSET, MAX_OPSET = 14, 20  # 14: Trilu/Softmax forms used; 20: the TorchScript exporter's limit
PAST_KEY, PAST_VALUE = "past_key_values.{i}.key", "past_key_values.{i}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{i}.key", "present.{i}.value"


def graph_names(n_layer: int) -> tuple[list[str], list[str]]:
    """(input names, output names) in the graph's order."""
    inputs = ["input_ids", "attention_mask", "position_ids"]
    outputs = ["logits"]
    for i in range(n_layer):
        inputs += [PAST_KEY.format(i=i), PAST_VALUE.format(i=i)]
        outputs += [PRESENT_KEY.format(i=i), PRESENT_VALUE.format(i=i)]
    return inputs, outputs


class OnnxGPT(nn.Module):
    """Flat ONNX interface around GPT: (ids, mask, positions, *past) -> (logits, *present).

    `lean=False` traces GPT.forward itself. `lean=True` (the default) runs the same modules
    and weights but spells attention out for a graph that decodes ~2x faster in ONNX
    Runtime: the additive mask is built once (not per layer), only q is scaled, and k^T
    is left to MatMul (ORT fuses the transpose). The exporter's SDPA instead scales and
    transposes the whole cached K in every layer at every step, and adds a NaN guard.
    export.verify checks either against the PyTorch model.
    """

    def __init__(self, model: GPT, lean: bool = True):
        super().__init__()
        self.model, self.lean = model, lean

    def forward(self, input_ids, attention_mask, position_ids, *past_flat):
        past = tuple((past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2))
        if not self.lean:
            logits, _, present = self.model(input_ids, past_kv=past, position_ids=position_ids,
                                            attention_mask=attention_mask)
            return (logits, *(t for kv in present for t in kv))
        m = self.model
        allowed = build_attention_mask(attention_mask, input_ids.size(1))      # (B, 1, T, S)
        # finfo.min rather than -inf: same softmax, and no NaN path for the graph to guard
        bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        x = m.wte(input_ids) + m.wpe(position_ids)                               # (B, T, C)
        outputs = []
        for block, (pk, pv) in zip(m.blocks, past):
            a, k, v = self._attention(block.attn, block.ln_1(x), pk, pv, bias)
            x = x + a
            x = x + block.mlp(block.ln_2(x))
            outputs += [k, v]
        return (m.lm_head(m.ln_f(x)), *outputs)

    @staticmethod
    def _attention(attn, x, past_k, past_v, bias):
        B, T, C = x.shape
        q, k, v = attn.qkv(x).split(C, dim=2)
        q = q.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)            # (B, nh, T, hs)
        k = torch.cat([past_k, k.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)], dim=2)
        v = torch.cat([past_v, v.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)], dim=2)
        att = (q * attn.head_dim ** -0.5) @ k.transpose(-2, -1) + bias           # (B, nh, T, S)
        y = torch.softmax(att, dim=-1) @ v                                       # (B, nh, T, hs)
        return attn.proj(y.transpose(1, 2).reshape(B, T, C)), k, v


def example_inputs(model: GPT, batch: int = 2, seq: int = 3, past: int = 2,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Inputs for tracing; sizes > 1 and all different so no axis gets specialised."""
    c = model.config
    ids = torch.randint(0, c.vocab_size, (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq)[None].expand(batch, seq).contiguous()
    kv = [torch.randn(batch, c.n_head, past, c.head_dim, dtype=dtype) for _ in range(2 * c.n_layer)]
    return (ids, mask, pos, *kv)


def dynamic_axes(n_layer: int) -> dict[str, dict[int, str]]:
    inputs, outputs = graph_names(n_layer)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    for name in inputs[3:]:
        axes[name] = {0: "batch", 2: "past_sequence"}
    for name in outputs[1:]:
        axes[name] = {0: "batch", 2: "total_sequence"}
    return axes


def export_onnx(model: GPT, path: str | Path, opset: int = 17) -> None:
    """Trace `model` (eval mode, CPU, fp32) into `path`."""
    wrapper = OnnxGPT(model).eval()
    inputs, outputs = graph_names(model.config.n_layer)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python ints taken from shapes; the dynamic axes below
        # keep those symbolic, and export.verify checks the result at many shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, example_inputs(model), str(path), dynamo=False,
            opset_version=opset, input_names=inputs, output_names=outputs,
            dynamic_axes=dynamic_axes(model.config.n_layer), do_constant_folding=True)


def convert_fp16(src: str | Path, dst: str | Path) -> None:
    """fp32 graph -> fp16 graph, inputs and outputs included (caches and logits in fp16).

    Converting the ONNX graph beats exporting a half-precision model: the TorchScript
    exporter builds SDPA's mask in fp32 even for fp16 inputs, which the checker rejects.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=False), str(dst))
