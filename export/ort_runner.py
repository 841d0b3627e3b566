"""Run the exported KV-cache graph from Python with ONNX Runtime, fast.

    gpt = OrtGPT("artifacts/default")                  # reads model_config.json
    logits, past = gpt.prefill(ids_2d, mask_2d)        # numpy in; past stays OrtValues
    logits, past = gpt.decode(next_ids, mask_2d, past)
    for tok in gpt.generate(prompt_ids, 200): ...      # greedy, window slide as training

The fastest recipe we measured on the 2-core CPU (bench/decode_speed.py):
- The graph itself matters most: export writes one com.microsoft MultiHeadAttention per
  layer that also adds the qkv bias and masks from attention_mask itself (no mask
  subgraph), plus FastGelu; 62 nodes, 56 kernels after ORT's own fusions (~460 traced).
- SessionOptions: graph_optimization_level ORT_ENABLE_ALL, execution_mode ORT_SEQUENTIAL,
  intra_op_num_threads 1 at batch 1 (a second thread only adds hand-off cost on a model
  this small), 2 for batches, inter_op_num_threads 1, and
  "session.intra_op.allow_spinning" = "0" (spinning workers starve a shared CPU).
- IO binding: bind the `present.*` outputs with `bind_output(name)` (ORT allocates) and
  feed those OrtValues straight back as the next step's `past_key_values.*` with
  `bind_ortvalue_input`, so the cache never round-trips through numpy; only `logits` is
  copied out. Start from empty (B, H, 0, D) past OrtValues for prefill.
- Call the binding's C++ object (`onnxruntime.capi._pybind_state`) directly: ORT's Python
  wrappers (IOBinding, OrtValue) re-check devices and wrap every output on every call,
  ~30 us a step, 10% of a batch-1 step here.
- Sample with numpy on the last position's fp32 logits; no torch in the loop.
Where a batch-1 step goes (frankenstein shape, past 116, 1 thread; ablating ops from the
graph): ~270 us in ORT of which the 17 MatMuls (13 MB of fp32 weights read per token, at
memory bandwidth) ~200, MultiHeadAttention ~40 (mostly copying past into present, which
the [B, H, P, D] interface requires), 15 Adds ~18, 9 LayerNorms ~11, FastGelu ~7; plus
~15-25 us of Python per step.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import _pybind_state as C


def session_options(threads: int = 1) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    # Idle worker threads spin by default; on a shared, busy CPU that steals the cores the
    # other thread needs.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def position_ids_for(mask: np.ndarray) -> np.ndarray:
    """Left padding: positions count real tokens only (clamp(cumsum(mask) - 1, 0))."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)


class OrtGPT:
    def __init__(self, art: str | Path, model_file: str | None = None, threads: int = 1):
        art = Path(art)
        self.meta = json.loads((art / "model_config.json").read_text())
        onnx_meta = self.meta["onnx"]
        self.sess = ort.InferenceSession(str(art / (model_file or onnx_meta["fp32"])),
                                         session_options(threads),
                                         providers=["CPUExecutionProvider"])
        self.past_names = onnx_meta["inputs"][3:]
        self.out_names = onnx_meta["outputs"]
        self.block = self.meta["context_length"]
        self.keep = self.meta["window_keep"]
        self.n_head, self.head_dim = self.meta["n_head"], self.meta["head_dim"]
        self.float_type = np.float16 if "float16" in self.sess.get_inputs()[3].type else np.float32
        self._c_sess = self.sess._sess  # the C++ session behind the Python wrapper
        self._cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()

    def empty_past(self, batch: int) -> list[C.OrtValue]:
        z = np.zeros((batch, self.n_head, 0, self.head_dim), self.float_type)  # no data to keep alive
        return [C.OrtValue.ortvalue_from_numpy(z, self._cpu) for _ in self.past_names]

    def forward(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray,
                past: Sequence[C.OrtValue]) -> tuple[np.ndarray, list[C.OrtValue]]:
        """One graph run. Returns (logits (B, T, V) numpy, present as OrtValues).

        `past` is what the previous call returned (or empty_past): ORT's own tensors, which
        own their memory. The numpy inputs only need to live until the run returns.
        """
        b = C.SessionIOBinding(self._c_sess)
        # bound by pointer, not copied: the (maybe temporary) arrays must outlive the run
        feeds = [np.ascontiguousarray(a, np.int64) for a in (ids, mask, pos)]
        for name, a in zip(("input_ids", "attention_mask", "position_ids"), feeds):
            b.bind_input(name, a)
        for name, v in zip(self.past_names, past):
            b.bind_ortvalue_input(name, v)
        for name in self.out_names:
            b.bind_output(name, self._cpu)
        self._c_sess.run_with_iobinding(b, None)
        outs = b.get_outputs()
        return outs[0].numpy(), [outs[i] for i in range(1, len(outs))]

    def prefill(self, ids: np.ndarray, mask: np.ndarray | None = None):
        ids = np.atleast_2d(np.asarray(ids, np.int64))
        mask = np.ones_like(ids) if mask is None else np.asarray(mask, np.int64)
        return self.forward(ids, mask, position_ids_for(mask), self.empty_past(ids.shape[0]))

    def decode(self, next_ids: np.ndarray, mask: np.ndarray, past: Sequence[C.OrtValue]):
        """`mask` already includes the new token's column."""
        pos = (mask.sum(axis=1, keepdims=True) - 1).astype(np.int64)
        return self.forward(np.asarray(next_ids, np.int64).reshape(-1, 1), mask, pos, past)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]:
        """Greedy, one sequence; slides the window like training.generate."""
        tokens = list(prompt_ids)[-self.block:] or [0]
        logits, past = self.prefill(np.array([tokens]))
        cached = len(tokens)
        for _ in range(max_new_tokens):
            next_id = int(logits[0, -1].argmax())
            yield next_id
            tokens.append(next_id)
            if cached >= self.block:
                tokens = tokens[-self.keep:]
                logits, past = self.prefill(np.array([tokens]))
                cached = len(tokens)
            else:
                cached += 1
                logits, past = self.decode(np.array([next_id]), np.ones((1, cached), np.int64), past)
