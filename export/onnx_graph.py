"""The ONNX graph: one graph for prefill and decode over an in-place KV cache.

    export_onnx(model, path, opset=17)          # trace, with one GroupQueryAttention a layer
    export_onnx(model, path, kv_dtype="fp16")   # ... over a KV cache kept in fp16
    fuse_for_ort(path, n_head, n_embd)          # ORT's fusions (FastGelu; GPT-2's block), in place
    convert_fp16(path, fp16_path)               # the same graph in fp16 (for CUDA)
    check_runnable(path, opset)                 # onnx.checker + one ONNX Runtime session

The contract (docs/DESIGN.md, "ONNX graph"): per layer the KV cache is one buffer
[B, kv heads, context, head_dim] for keys and one for values, bound as both
`past_key_values.{i}.*` and `present.{i}.*`, so ONNX Runtime's com.microsoft
GroupQueryAttention reads it and writes each new token's column in place: a decode step
copies nothing. Rows are right-padded; `seqlens_k[b]` is row b's length after this call
minus one and `total_sequence_length` the longest row's length. A call whose sequence
length equals `total_sequence_length` is a prefill (each row from position 0), a call
with one token per row is a decode step; the names live in core/artifact.py.

The graph is the model's own forward (GPT or Qwen3, training/attention.py's seam): `OnnxModel`
gives it the flat interface and `GroupQueryStep` in place of PyTorch's attention step, so
nothing here walks the layers or knows their weights. GPT-2's packed q|k|v goes into the node
as it is (its bias is its own Add); Qwen3's q, k, v go in apart, after QK-norm, and the node
rotates them itself (do_rotary, half-split, cos/sin tables of the context, at `position_ids`)
with kv_num_heads = n_kv_head. With `kv_dtype="fp16"` the cache buffers (past and present)
are fp16 and the node runs in fp16: q, k, v (and Qwen3's cos/sin tables) are cast to fp16
before it and its output back to fp32, so every other operator stays fp32 (half the cache's
bytes; docs/export.md has what it costs). While tracing, the heads' unflatten/flatten become Reshapes of
constant shape (`lean_reshapes`): the graph of GPT-2's block is op for op what it was when
this file built it by hand. Exporter: the TorchScript-based `torch.onnx.export(...,
dynamo=False)`, which takes a custom op from a few lines of `symbolic`; export.verify checks
the graph against the model's forward at many shapes.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn
from torch.onnx import symbolic_helper

from core.artifact import graph_names
from core.errors import UserError

MIN_OPSET, MAX_OPSET = 14, 20  # 14..20 export and pass export.verify; 20 is the exporter's limit
HEAD_DIM_MULTIPLE = 8          # GroupQueryAttention's CPU kernel needs it
ROTARY_HEAD_DIM_MULTIPLE = 16  # ... and this when it applies rotary
_TORCH_KV = {"fp32": torch.float32, "fp16": torch.float16}   # core/artifact.py's KV_DTYPES -> the buffers'


_TENSOR_FLOAT, _TENSOR_FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def absent(g):
    """An omitted optional input."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


class _GroupQueryAttention(torch.autograd.Function):
    """Traced as ONNX Runtime's com.microsoft GroupQueryAttention over a shared KV buffer.

    Only ever traced: the forward returns tensors of the node's output shapes, and the
    numbers the graph computes are checked against the model's forward by export.verify.
    """

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, seqlens_k, total_length, cos, sin, position_ids,
                n_head: int, n_kv_head: int, head_dim: int, half: bool):
        return q[..., :n_head * head_dim].clone(), past_k.clone(), past_v.clone()

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens_k, total_length, cos, sin, position_ids,
                 n_head: int, n_kv_head: int, head_dim: int, half: bool):
        # inputs: query, key, value, past key, past value, seqlens_k, total length[, cos, sin, positions]
        # (no key and value: the query holds q | k | v packed)
        if k is None or k.node().mustBeNone():
            k = v = absent(g)
        rotary = {} if cos is None or cos.node().mustBeNone() else {"do_rotary_i": 1, "rotary_interleaved_i": 0}
        fp16 = _TENSOR_FLOAT16 if half else None
        # an fp16 cache: the node's float inputs must all be its type T (q, k, v, past, cos, sin)
        q, k, v, cos, sin = (x if fp16 is None or x is None or x.node().mustBeNone()
                             else g.op("Cast", x, to_i=fp16) for x in (q, k, v, cos, sin))
        extra = [] if not rotary else [cos, sin, position_ids]
        y, k_out, v_out = g.op("com.microsoft::GroupQueryAttention", q, k, v, past_k, past_v, seqlens_k,
                               total_length, *extra, num_heads_i=n_head, kv_num_heads_i=n_kv_head,
                               outputs=3, **rotary)
        y.setType(past_k.type().with_sizes([None, None, n_head * head_dim]))   # (B, T, H * D), B and T symbolic
        k_out.setType(past_k.type())
        v_out.setType(past_v.type())
        if fp16 is not None:   # the rest of the layer reads fp32
            y = g.op("Cast", y, to_i=_TENSOR_FLOAT)
        return y, k_out, v_out


class GroupQueryStep:
    """The attention step of training/attention.py as one GroupQueryAttention node per layer:
    layer i's past buffers go in and come out written in place; the node applies rotary itself
    (the model's cos/sin tables at the graph's position_ids) when the model has it."""

    def __init__(self, model: nn.Module, past_flat, seqlens_k, total_length, position_ids, cos=None, sin=None):
        self.past, self.seqlens, self.total = past_flat, seqlens_k, total_length
        self.positions, self.cos, self.sin = position_ids, cos, sin
        c = model.config
        self.heads = (c.n_head, c.kv_heads, c.head_dim)
        self.half = past_flat[0].dtype == torch.float16     # the cache's dtype decides the node's

    def __call__(self, i, q, k=None, v=None):
        y, k_out, v_out = _GroupQueryAttention.apply(      # q, k, v, y: (B, T, heads * D)
            q, k, v, self.past[2 * i], self.past[2 * i + 1], self.seqlens, self.total,
            self.cos, self.sin, self.positions, *self.heads, self.half)
        return y, (k_out, v_out)


class OnnxModel(nn.Module):
    """The graph's flat interface around the model's own forward:
    (input_ids, position_ids, seqlens_k, total_sequence_length, *past) -> (logits, *present).
    Only the attention step differs from training (GroupQueryStep instead of PyTorch's)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rotary = hasattr(model, "rotary")
        if self.rotary:   # GroupQueryAttention's (context, D/2) tables, as the graph's initializers
            cos, sin = model.rotary.cos_sin_cache(model.config.block_size)
            self.register_buffer("cos_cache", cos, persistent=False)
            self.register_buffer("sin_cache", sin, persistent=False)

    def forward(self, input_ids, position_ids, seqlens_k, total_length, *past_flat):
        cos, sin = (self.cos_cache, self.sin_cache) if self.rotary else (None, None)
        step = GroupQueryStep(self.model, past_flat, seqlens_k, total_length, position_ids, cos, sin)
        logits, _, present = self.model(input_ids, position_ids=position_ids, attend=step)
        return (logits, *(t for kv in present for t in kv))


def _unflatten_last(g, x, dim, sizes):
    """x.unflatten(-1, sizes) as one Reshape whose 0s copy the leading (batch, sequence) dims:
    the tracer's own version computes them with ~10 shape ops a call, each a kernel launch."""
    rank = symbolic_helper._get_tensor_rank(x)
    dim, sizes = symbolic_helper._parse_arg(dim, "i"), symbolic_helper._parse_arg(sizes, "is")
    if rank is None or dim not in (-1, rank - 1):
        raise UserError("export: unflatten is only supported on the last dim")
    sizes = list(sizes) if -1 in sizes else [*sizes[:-1], -1]     # the tracer wants one -1 beside 0s
    return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([0] * (rank - 1) + sizes)))


def _flatten_tail(g, x, start, end):
    """x.flatten(start) (through the last dim) as one Reshape: [0, .., 0, -1]."""
    rank = symbolic_helper._get_tensor_rank(x)
    start, end = symbolic_helper._parse_arg(start, "i"), symbolic_helper._parse_arg(end, "i")
    if rank is None or end not in (-1, rank - 1):
        raise UserError("export: flatten is only supported through the last dim")
    start = start % rank
    return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([0] * start + [-1])))


@contextlib.contextmanager
def lean_reshapes(opset: int):
    """While tracing, the heads' unflatten / flatten become Reshapes with constant shapes."""
    ops = {"aten::unflatten": _unflatten_last, "aten::flatten": _flatten_tail}
    for name, fn in ops.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in ops:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


def example_inputs(model: nn.Module, batch: int = 2, seq: int = 3, kv_dtype: str = "fp32") -> tuple[torch.Tensor, ...]:
    """A prefill's inputs for tracing; sizes > 1 and all different so no axis is specialised.
    The past buffers' dtype is the cache's: the graph's past/present take it from them."""
    c = model.config
    ids = torch.randint(0, c.vocab_size, (batch, seq))
    pos = torch.arange(seq)[None].expand(batch, seq).contiguous()
    seqlens = torch.full((batch,), seq - 1, dtype=torch.int32)
    total = torch.tensor(seq, dtype=torch.int32)
    kv = [torch.zeros(batch, c.kv_heads, c.block_size, c.head_dim, dtype=_TORCH_KV[kv_dtype])
          for _ in range(2 * c.n_layer)]
    return (ids, pos, seqlens, total, *kv)


def dynamic_axes(n_layer: int) -> dict[str, dict[int, str]]:
    inputs, outputs = graph_names(n_layer)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in inputs[:2]}
    axes[inputs[2]] = {0: "batch"}
    axes[outputs[0]] = {0: "batch", 1: "sequence"}
    for name in inputs[4:] + outputs[1:]:
        axes[name] = {0: "batch"}      # the sequence axis is the fixed buffer (context length)
    return axes


def check_exportable(model: nn.Module) -> None:
    c = model.config
    if c.model not in ("gpt", "qwen3"):
        raise UserError(f"a {c.model!r} model has no KV cache to export; train with --model gpt or qwen3")
    # GroupQueryAttention's CPU kernel needs heads of a multiple of 8, 16 when it applies rotary
    multiple = ROTARY_HEAD_DIM_MULTIPLE if c.model == "qwen3" else HEAD_DIM_MULTIPLE
    if c.head_dim % multiple:
        raise UserError(f"head size {c.head_dim} (n_embd {c.n_embd} / n_head {c.n_head}) is not a "
                        f"multiple of {multiple}, which ONNX Runtime's GroupQueryAttention needs"
                        f"{' with rotary' if c.model == 'qwen3' else ''}; train with n_embd / n_head "
                        f"a multiple of {multiple}")


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17, kv_dtype: str = "fp32") -> None:
    """Trace `model` (eval mode, CPU, fp32) into `path`, its KV cache in `kv_dtype`."""
    check_exportable(model)
    inputs, outputs = graph_names(model.config.n_layer)
    with torch.no_grad(), warnings.catch_warnings(), lean_reshapes(opset):
        # The tracer warns about Python ints taken from shapes; the dynamic axes keep those
        # symbolic, and export.verify checks the result at many shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OnnxModel(model).eval(), example_inputs(model, kv_dtype=kv_dtype), str(path), dynamo=False,
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
