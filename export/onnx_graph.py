"""The ONNX graph: one graph for prefill and decode over an in-place KV cache.

    export_onnx(model, path, opset=17)          # trace, with one GroupQueryAttention a layer
    fuse_for_ort(path, n_head, n_embd)          # ORT's fusions (FastGelu), in place
    convert_fp16(path, fp16_path)               # the same graph in fp16 (for CUDA)
    check_runnable(path, opset)                 # onnx.checker + one ONNX Runtime session

The contract (docs/DESIGN.md, "ONNX graph"): per layer the KV cache is one buffer
[B, n_head, context, head_dim] for keys and one for values, bound as both
`past_key_values.{i}.*` and `present.{i}.*`, so ONNX Runtime's com.microsoft
GroupQueryAttention reads it and writes each new token's column in place: a decode step
copies nothing. Rows are right-padded; `seqlens_k[b]` is row b's length after this call
minus one and `total_sequence_length` the longest row's length. A call whose sequence
length equals `total_sequence_length` is a prefill (each row from position 0), a call
with one token per row is a decode step; the names live in core/artifact.py.

`OnnxGPT` wraps `training.model.GPT` so the traced graph has that flat interface; the
qkv bias is its own Add (GroupQueryAttention has no bias input) and q, k, v stay packed.
Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`, which takes a
custom op from a few lines of `symbolic`; export.verify checks the graph against
GPT.forward at many shapes.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.artifact import graph_names
from core.errors import UserError
from training.model import GPT

MIN_OPSET, MAX_OPSET = 14, 20  # 14..20 export and pass export.verify; 20 is the exporter's limit
HEAD_DIM_MULTIPLE = 8          # GroupQueryAttention's CPU kernel needs it


class _GroupQueryAttention(torch.autograd.Function):
    """Traced as ONNX Runtime's com.microsoft GroupQueryAttention over a shared KV buffer.

    Only ever traced: the forward returns tensors of the node's output shapes, and the
    numbers the graph computes are checked against GPT.forward by export.verify.
    """

    @staticmethod
    def forward(ctx, qkv, past_k, past_v, seqlens_k, total_length, n_head: int, n_embd: int):
        return qkv[..., :n_embd].clone(), past_k.clone(), past_v.clone()

    @staticmethod
    def symbolic(g, qkv, past_k, past_v, seqlens_k, total_length, n_head: int, n_embd: int):
        def absent():
            node = g.op("prim::Constant")
            node.setType(torch._C.OptionalType.ofTensor())
            return node
        # inputs: query (packed q|k|v), key, value, past key, past value, seqlens_k, total length
        y, k, v = g.op("com.microsoft::GroupQueryAttention", qkv, absent(), absent(), past_k, past_v,
                       seqlens_k, total_length, num_heads_i=n_head, kv_num_heads_i=n_head, outputs=3)
        y.setType(qkv.type().with_sizes([None, None, n_embd]))   # (B, T, C), B and T symbolic
        k.setType(past_k.type())
        v.setType(past_v.type())
        return y, k, v


class OnnxGPT(nn.Module):
    """Flat interface around GPT for tracing:
    (input_ids, position_ids, seqlens_k, total_sequence_length, *past) -> (logits, *present).
    Same modules and weights as GPT.forward."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, seqlens_k, total_length, *past_flat):
        m = self.model
        x = m.wte(input_ids) + m.wpe(position_ids)                                 # (B, T, C)
        present = []
        for i, block in enumerate(m.blocks):
            attn = block.attn
            qkv = F.linear(block.ln_1(x), attn.qkv.weight, attn.qkv.bias)           # (B, T, 3C)
            y, k, v = _GroupQueryAttention.apply(qkv, past_flat[2 * i], past_flat[2 * i + 1],
                                                 seqlens_k, total_length, attn.n_head, m.config.n_embd)
            x = x + attn.proj(y)
            x = x + block.mlp(block.ln_2(x))
            present += [k, v]
        return (m.lm_head(m.ln_f(x)), *present)


def example_inputs(model: GPT, batch: int = 2, seq: int = 3) -> tuple[torch.Tensor, ...]:
    """A prefill's inputs for tracing; sizes > 1 and all different so no axis is specialised."""
    c = model.config
    ids = torch.randint(0, c.vocab_size, (batch, seq))
    pos = torch.arange(seq)[None].expand(batch, seq).contiguous()
    seqlens = torch.full((batch,), seq - 1, dtype=torch.int32)
    total = torch.tensor(seq, dtype=torch.int32)
    kv = [torch.zeros(batch, c.n_head, c.block_size, c.head_dim) for _ in range(2 * c.n_layer)]
    return (ids, pos, seqlens, total, *kv)


def dynamic_axes(n_layer: int) -> dict[str, dict[int, str]]:
    inputs, outputs = graph_names(n_layer)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in inputs[:2]}
    axes[inputs[2]] = {0: "batch"}
    axes[outputs[0]] = {0: "batch", 1: "sequence"}
    for name in inputs[4:] + outputs[1:]:
        axes[name] = {0: "batch"}      # the sequence axis is the fixed buffer (context length)
    return axes


def check_exportable(model: GPT) -> None:
    c = model.config
    if c.head_dim % HEAD_DIM_MULTIPLE:
        raise UserError(f"head size {c.head_dim} (n_embd {c.n_embd} / n_head {c.n_head}) is not a "
                        f"multiple of {HEAD_DIM_MULTIPLE}, which ONNX Runtime's GroupQueryAttention "
                        f"needs; train with n_embd / n_head a multiple of {HEAD_DIM_MULTIPLE}")


def export_onnx(model: GPT, path: str | Path, opset: int = 17) -> None:
    """Trace `model` (eval mode, CPU, fp32) into `path`."""
    check_exportable(model)
    inputs, outputs = graph_names(model.config.n_layer)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python ints taken from shapes; the dynamic axes keep those
        # symbolic, and export.verify checks the result at many shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OnnxGPT(model).eval(), example_inputs(model), str(path), dynamo=False,
            opset_version=opset, input_names=inputs, output_names=outputs,
            dynamic_axes=dynamic_axes(model.config.n_layer), do_constant_folding=True,
            custom_opsets={"com.microsoft": 1})


def fuse_for_ort(path: str | Path, n_head: int, n_embd: int) -> dict[str, int]:
    """Rewrite `path` with ONNX Runtime's transformer fusions; returns what was fused.

    The tanh-GELU pattern (+ its bias Add) -> FastGelu. Add + LayerNormalization ->
    SkipLayerNormalization stays off: ORT's CPU SkipLayerNormalization is slower than the
    Adds + LayerNormalization it replaces (measured on (16, 1, 256): 165 vs 35 us).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    options = FusionOptions("gpt2")
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    options.enable_attention = False   # attention is already one GroupQueryAttention a layer
    logging.disable(logging.WARNING)   # its shape inference warns on every dynamic slice
    try:
        opt = optimize_model(str(path), model_type="gpt2", num_heads=n_head, hidden_size=n_embd,
                             opt_level=0, use_gpu=False, optimization_options=options)
    finally:
        logging.disable(logging.NOTSET)
    opt.save_model_to_file(str(path))
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def convert_fp16(src: str | Path, dst: str | Path) -> None:
    """fp32 graph -> fp16 graph, inputs and outputs included (caches and logits in fp16).
    The int inputs (ids, positions, lengths) stay as they are."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=False), str(dst))


def check_runnable(path: str | Path, opset: int) -> None:
    """onnx.checker with full shape inference, then one ONNX Runtime session (CPU): every
    graph export writes (fp32, fp16, int8) passes this before it is kept."""
    import onnxruntime as ort
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise UserError(f"the exported graph fails onnx.checker at opset {opset}: "
                        f"{str(e).splitlines()[0]}; try --opset 17") from None
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UserError(f"ONNX Runtime {ort.__version__} cannot run the graph at opset {opset} "
                        f"({str(e).splitlines()[0][:200]}); try --opset 17") from None
