"""The ONNX graph: one KV-cache graph for prefill (past length 0) and one-token decode.

    names = graph_names(config.n_layer)                 # input/output names, in order
    export_onnx(model, path, opset=17)                  # trace (attention="ort" by default)
    fuse_for_ort(path, n_head, n_embd)                  # ORT's transformer fusions, in place
    convert_fp16(path, fp16_path)                       # the same graph in fp16 (for CUDA)

`OnnxGPT` wraps `training.model.GPT` so the traced graph has the flat interface of
docs/DESIGN.md ("ONNX graph with KV cache"): it always passes `attention_mask` and
`position_ids` (so left padding works) and maps the flat `past_key_values.{i}.key/.value`
inputs to the model's per-layer (k, v).

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. The dynamo
exporter (torch 2.13 + onnxscript) fails in torch.export on `build_attention_mask`'s slice
(an unbacked size, GuardOnDataDependentSymNode) unless the wrapper adds torch._check
hints; with them it works, but it needs the extra onnxscript package and would need an
onnxscript translation for the fused attention op that the TorchScript exporter gets from
a 10-line `symbolic`. So the TorchScript exporter it is.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.model import GPT, build_attention_mask

ATTENTION_KINDS = ("ort", "onnx", "model")
MIN_OPSET, MAX_OPSET = 14, 20  # 14..20 export and pass export.verify; 20 is the exporter's limit
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


class _MultiHeadAttention(torch.autograd.Function):
    """Attention with a KV cache; exported as ONNX Runtime's com.microsoft MultiHeadAttention.

    One fused node per layer instead of ~25 (reshapes, transposes, concat, matmuls,
    softmax): on a model this small the per-node overhead is most of a decode step.
    Its inputs and outputs use the cache layout of our graph ([B, H, P, D]). The node also
    adds the qkv bias and builds the mask itself from `key_mask` (the int32 attention_mask,
    as its key_padding_mask) and `unidirectional=1` (causal, offset by the past length), so
    the graph needs no mask subgraph and no bias Add: ~20 fewer nodes per step.
    Rows of padding queries differ from PyTorch's (they see nothing real either way); no
    real token attends to them, so real tokens' logits and caches are unchanged.
    CUDA: onnxruntime-gpu 1.31's MultiHeadAttention takes `unidirectional` and a 2-D
    key_padding_mask (some older releases refused `unidirectional` on CUDA).
    """

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, qkv_bias, key_mask, n_head: int):
        B, T, C = q.shape
        D = C // n_head
        if qkv_bias is not None:
            bq, bk, bv = qkv_bias.split(C)
            q, k, v = q + bq, k + bk, v + bv
        allowed = build_attention_mask(key_mask, T)                               # (B, 1, T, S)
        q = q.view(B, T, n_head, D).transpose(1, 2)                              # (B, nh, T, hs)
        k = torch.cat([past_k, k.view(B, T, n_head, D).transpose(1, 2)], dim=2)  # (B, nh, S, hs)
        v = torch.cat([past_v, v.view(B, T, n_head, D).transpose(1, 2)], dim=2)
        att = ((q * D ** -0.5) @ k.transpose(-2, -1)).masked_fill(~allowed, torch.finfo(q.dtype).min)
        y = torch.softmax(att, dim=-1) @ v
        return y.transpose(1, 2).reshape(B, T, C), k, v

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, qkv_bias, key_mask, n_head: int):
        def absent():
            node = g.op("prim::Constant")
            node.setType(torch._C.OptionalType.ofTensor())
            return node
        bias = absent() if qkv_bias is None or qkv_bias.node().mustBeNone() else qkv_bias
        # inputs: query, key, value, qkv bias, key_padding_mask, attention_bias, past k, v
        y, k_all, v_all = g.op("com.microsoft::MultiHeadAttention", q, k, v, bias, key_mask,
                               absent(), past_k, past_v, num_heads_i=n_head, unidirectional_i=1,
                               outputs=3)
        y.setType(q.type())
        k_all.setType(past_k.type())
        v_all.setType(past_v.type())
        return y, k_all, v_all


def _reference_attention(q, k, v, past_k, past_v, bias, n_head: int):
    """The "onnx" spelling: standard ops, the additive mask built once by the caller."""
    B, T, C = q.shape
    D = C // n_head
    q = q.view(B, T, n_head, D).transpose(1, 2)                              # (B, nh, T, hs)
    k = torch.cat([past_k, k.view(B, T, n_head, D).transpose(1, 2)], dim=2)  # (B, nh, S, hs)
    v = torch.cat([past_v, v.view(B, T, n_head, D).transpose(1, 2)], dim=2)
    att = (q * D ** -0.5) @ k.transpose(-2, -1) + bias                       # (B, nh, T, S)
    y = torch.softmax(att, dim=-1) @ v
    return y.transpose(1, 2).reshape(B, T, C), k, v


class OnnxGPT(nn.Module):
    """Flat ONNX interface around GPT: (ids, mask, positions, *past) -> (logits, *present).

    Same modules and weights as GPT.forward; `attention` picks how attention is spelled:
    - "ort" (default): ONNX Runtime's fused MultiHeadAttention (com.microsoft domain).
    - "onnx": standard ONNX ops only; the additive mask built once, only q scaled, k^T
      left to MatMul. ~2x faster than tracing SDPA, which scales and transposes the whole
      cached K in every layer at every step and adds a NaN guard.
    - "model": GPT.forward as it is (SDPA).
    Every mode always passes attention_mask and position_ids (left padding works), and
    export.verify checks the result against the PyTorch model.
    """

    def __init__(self, model: GPT, attention: str = "ort"):
        super().__init__()
        assert attention in ATTENTION_KINDS, attention
        self.model, self.attention = model, attention

    def forward(self, input_ids, attention_mask, position_ids, *past_flat):
        past = tuple((past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2))
        m = self.model
        if self.attention == "model":
            logits, _, present = m(input_ids, past_kv=past, position_ids=position_ids,
                                   attention_mask=attention_mask)
            return (logits, *(t for kv in present for t in kv))
        x = m.wte(input_ids) + m.wpe(position_ids)                               # (B, T, C)
        if self.attention == "ort":
            key_mask = attention_mask.to(torch.int32)  # the op's key_padding_mask dtype
        else:
            allowed = build_attention_mask(attention_mask, input_ids.size(1))  # (B, 1, T, S)
            # finfo.min rather than -inf: same softmax, and no NaN path for the graph to guard
            bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        outputs = []
        for block, (pk, pv) in zip(m.blocks, past):
            attn = block.attn
            if self.attention == "ort":  # the op adds the qkv bias
                q, k, v = F.linear(block.ln_1(x), attn.qkv.weight).split(x.size(-1), dim=2)
                y, k, v = _MultiHeadAttention.apply(q, k, v, pk, pv, attn.qkv.bias, key_mask, attn.n_head)
            else:
                q, k, v = attn.qkv(block.ln_1(x)).split(x.size(-1), dim=2)
                y, k, v = _reference_attention(q, k, v, pk, pv, bias, attn.n_head)
            x = x + attn.proj(y)
            x = x + block.mlp(block.ln_2(x))
            outputs += [k, v]
        return (m.lm_head(m.ln_f(x)), *outputs)


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


def export_onnx(model: GPT, path: str | Path, opset: int = 17, attention: str = "ort") -> None:
    """Trace `model` (eval mode, CPU, fp32) into `path`."""
    wrapper = OnnxGPT(model, attention).eval()
    inputs, outputs = graph_names(model.config.n_layer)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python ints taken from shapes; the dynamic axes below
        # keep those symbolic, and export.verify checks the result at many shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, example_inputs(model), str(path), dynamo=False,
            opset_version=opset, input_names=inputs, output_names=outputs,
            dynamic_axes=dynamic_axes(model.config.n_layer), do_constant_folding=True,
            custom_opsets={"com.microsoft": 1} if attention == "ort" else None)


def fuse_for_ort(path: str | Path, n_head: int, n_embd: int,
                 skip_layer_norm: bool = False) -> dict[str, int]:
    """Rewrite `path` with ONNX Runtime's transformer fusions; returns what was fused.

    The tanh-GELU pattern (+ its bias Add) -> FastGelu (com.microsoft). Names, shapes and
    numerics (within 1e-6) stay; export.verify checks it. Add + LayerNormalization ->
    SkipLayerNormalization is off by default: ORT's CPU SkipLayerNormalization is slower
    than the Adds + LayerNormalization it replaces (9 of them on (16, 1, 256): 165 vs 35 us;
    a batch-16 decode step -5% without it, batch 1 unchanged). ORT still fuses the
    embedding sum itself.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    options = FusionOptions("gpt2")
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = skip_layer_norm
    logging.disable(logging.WARNING)  # its shape inference warns on every dynamic slice
    try:
        opt = optimize_model(str(path), model_type="gpt2", num_heads=n_head, hidden_size=n_embd,
                             opt_level=0, use_gpu=False, optimization_options=options)
    finally:
        logging.disable(logging.NOTSET)
    opt.save_model_to_file(str(path))
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def convert_fp16(src: str | Path, dst: str | Path) -> None:
    """fp32 graph -> fp16 graph, inputs and outputs included (caches and logits in fp16).

    Converting the ONNX graph beats exporting a half-precision model: the TorchScript
    exporter builds SDPA's mask in fp32 even for fp16 inputs, which the checker rejects.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=False), str(dst))
