"""The ONNX Runtime session for the KV-cache graph: provider choice and one `run` call.

    rt = Runtime(artifact, device="auto", threads=0)
    logits, present = rt.run(input_ids, attention_mask, position_ids, past)

Input and output names come from model_config.json (export defines them once). The CUDA
provider is used only when a GPU is really usable; otherwise CPU, with one log line.
On CUDA the KV cache stays on the GPU between steps (IO binding: `present` is a list of
OrtValues fed back as the next `past`); only logits come back to the host. The engine
calls `to_host` / `to_device` around its rare batch edits (joins, removals). On CPU,
plain numpy in and out is as fast, so binding is off unless asked for (tests use it).
"""
from __future__ import annotations

import ctypes
import logging

import numpy as np
import onnxruntime as ort

from serving.artifact import Artifact
from serving.errors import UserError

log = logging.getLogger("shelley.runtime")
CUDA = "CUDAExecutionProvider"


def cuda_usable() -> bool:
    """True when the CUDA driver loads and sees a device (onnxruntime-gpu lists its CUDA
    provider even on machines without one, then fails at session time)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except OSError:
        return False


def choose_providers(device: str) -> list[str]:
    if device in ("auto", "cuda"):
        if CUDA in ort.get_available_providers() and cuda_usable():
            return [CUDA, "CPUExecutionProvider"]
        log.info("no usable CUDA GPU (device=%s); running on CPU", device)
    return ["CPUExecutionProvider"]


class Runtime:
    def __init__(self, artifact: Artifact, device: str = "auto", threads: int = 0, bind: bool = False):
        mc = artifact.config
        self.n_layer, self.n_head, self.head_dim = mc["n_layer"], mc["n_head"], mc["head_dim"]
        providers = choose_providers(device)
        on_cuda = providers[0] == CUDA
        path = artifact.onnx_path(fp16=True) if on_cuda and mc["onnx"].get("fp16") else artifact.onnx_path()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        # Spinning pool threads would steal the CPU from the gRPC event loop between steps.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
            self.provider = self.session.get_providers()[0]
            # --threads 0 on CPU: a batch of one runs on its own 1-thread session. On this
            # small a model a second thread only adds hand-off cost at batch 1 (measured:
            # ~1.6x slower), while batches gain from every core. It costs a second copy of
            # the weights.
            self.single = None
            if threads == 0 and self.provider == "CPUExecutionProvider":
                so.intra_op_num_threads = 1
                self.single = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:  # ORT raises its own types for a bad graph
            raise UserError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None
        if on_cuda and self.provider != CUDA:
            log.info("the CUDA provider failed to start; running on CPU")
        onnx = mc["onnx"]
        self.past_names = [n for i in range(self.n_layer)
                           for n in (onnx["past_key"].format(i=i), onnx["past_value"].format(i=i))]
        self.present_names = [n for i in range(self.n_layer)
                              for n in (onnx["present_key"].format(i=i), onnx["present_value"].format(i=i))]
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in ["input_ids", "attention_mask", "position_ids", *self.past_names] if n not in inputs]
        if missing:
            raise UserError(f"{path} lacks inputs {', '.join(missing)}; re-run the export")
        self.dtype = np.float16 if inputs[self.past_names[0]].type == "tensor(float16)" else np.float32
        self.outputs = ["logits", *self.present_names]
        self.bind = bind or self.provider == CUDA
        self.device = "cuda" if self.provider == CUDA else "cpu"
        log.info("ONNX Runtime %s: %s on %s (%s)", ort.__version__, path.name, self.provider,
                 np.dtype(self.dtype).name)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.n_head, 0, self.head_dim)
        return [np.zeros(shape, self.dtype) for _ in self.past_names]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
            past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        if self.bind:
            return self._run_bound(input_ids, attention_mask, position_ids, past)
        feeds = dict(zip(self.past_names, past))
        feeds["input_ids"], feeds["attention_mask"], feeds["position_ids"] = input_ids, attention_mask, position_ids
        session = self.single if self.single is not None and input_ids.shape[0] == 1 else self.session
        out = session.run(self.outputs, feeds)
        return out[0], out[1:]

    def _run_bound(self, input_ids, attention_mask, position_ids, past):
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", input_ids)
        io.bind_cpu_input("attention_mask", attention_mask)
        io.bind_cpu_input("position_ids", position_ids)
        for name, value in zip(self.past_names, past):
            if isinstance(value, np.ndarray):   # a fresh prefill's empty cache, or after an edit
                io.bind_cpu_input(name, value)
            else:
                io.bind_ortvalue_input(name, value)
        io.bind_output("logits", "cpu")
        for name in self.present_names:
            io.bind_output(name, self.device)
        self.session.run_with_iobinding(io)
        out = io.get_outputs()
        return out[0].numpy(), out[1:]

    def to_host(self, past: list) -> list[np.ndarray]:
        return [v if isinstance(v, np.ndarray) else v.numpy() for v in past]

    def to_device(self, arrays: list[np.ndarray]) -> list:
        if not self.bind:
            return arrays
        return [ort.OrtValue.ortvalue_from_numpy(a, self.device, 0) for a in arrays]
