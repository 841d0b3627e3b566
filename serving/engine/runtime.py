"""ONNX Runtime over the in-place KV-cache graph: the one runtime the server, export.verify
and the benches share.

    rt = Runtime(artifact, device="auto", threads=0, precision="fp32", slots=32, spread="auto")
    log.info(rt.calibrate())                   # time each way to spread a step over the cores
    last = rt.prefill(first_slot=3, prompts=[[5, 6, 7], [8, 9]])  # into slots 3 and 4: (2, V)
    logits = rt.decode(tokens, lengths)        # rows 0..n-1, one token each: (n, V)
    logits = rt.forward(ids, positions, seqlens, total, first_slot=0)   # the raw call: (B, T, V)
    rt.copy_prefix(src=3, dst=5, length=3)     # slot 5's cache holds slot 3's first 3 tokens (CPU)

The KV cache (serving/engine/kvcache.py) is one buffer per layer for keys and one for
values, [slots, kv heads, context, head_dim], reserved once, in memory only where written.
Every call binds a run of adjacent slots of those buffers, by pointer, as both `past_key_values.*` and `present.*`, and the
graph's GroupQueryAttention writes the new tokens' columns in place: nothing is copied
between steps, whoever joins or leaves. A prefill binds afresh; decode steps reuse one
binding per row run and thread count (`DecodeBinding`), writing their small inputs into its buffers.
`lengths[b]` counts the tokens already in slot b's cache; a free slot's row is fed at the
length of the cache it keeps for the prefix cache (serving/engine/slots.py), so its new key
and value land just past what it keeps, and its logits are ignored. The graph contract is
docs/DESIGN.md's "ONNX graph"; the names come from core/artifact.py.

The CUDA provider is used only when a GPU is really usable (then the buffers live on the
GPU and only logits come back); otherwise the CPU, with one log line.
"""
from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import _pybind_state as C

from core.artifact import INPUT_IDS, LOGITS, POSITION_IDS, SEQLENS, TOTAL_LENGTH, Artifact
from core.cpus import usable_cores
from core.errors import UserError
from serving.engine.kvcache import KVCache
from serving.engine.spread import SPINS, Plan, Plans

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


def session_options(threads: int, spin: str = "call") -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3   # warnings about unused initializers are noise here
    # How a pooled session's threads wait (single-threaded sessions have no pool):
    # "call" spins between the kernels of one graph call and sleeps once it returns, so a
    # matmul split over the cores starts without waking a sleeping thread for each operator,
    # and the cores are free for the event loop and the clients between steps
    # (bench/spin.py: a lone 11.5M stream 1.2x, 32 streams 1.1x, against "off"); "always"
    # also spins between calls, taking those cores; "off" sleeps between kernels too.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin == "off" else "1")
    if spin == "call":
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


class Runtime:
    def __init__(self, artifact: Artifact, device: str = "auto", threads: int = 0,
                 precision: str = "fp32", slots: int = 32, spin: str = "call", spread: str = "auto"):
        mc = artifact.config
        self.context, self.vocab = mc.context_length, mc.vocab_size
        providers = choose_providers(device)
        on_cuda = providers[0] == CUDA
        if precision == "fp32" and on_cuda and "fp16" in mc.files:
            precision = "fp16"   # the GPU's file when there is one
        path = artifact.onnx_path(precision)
        # On the CPU a step's rows may be cut into slices of adjacent rows, each run by a
        # single-threaded session on its own thread (one join per step instead of ORT's fork
        # and join around every operator: batch 32 on 2 cores, 1.23x ORT's own two threads),
        # or run whole on a session whose intra-op threads split each matmul (a lone row of
        # a larger model), or both: `plans` (serving/engine/spread.py) decides per row count
        # from what `calibrate` measured here. One prompt's prefill runs on the pooled session.
        self.workers = 1 if on_cuda else (threads or usable_cores())
        self.plans = Plans(self.workers, spread)
        if spin not in SPINS:
            raise ValueError(f"spin must be one of {SPINS}, got {spin!r}")
        self._path, self._providers, self._spin = path, providers, spin
        try:
            self.session = ort.InferenceSession(str(path), session_options(self.workers, spin), providers=providers)
            self.provider = self.session.get_providers()[0]
            self.single = self.session if self.workers == 1 else ort.InferenceSession(
                str(path), session_options(1), providers=providers)
        except Exception as e:  # ORT raises its own types for a bad graph
            raise UserError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None
        self._sessions = {1: self.single, self.workers: self.session}   # by intra-op threads
        if on_cuda and self.provider != CUDA:
            log.info("the CUDA provider failed to start; running on CPU")
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in mc.inputs if n not in inputs]
        if missing:
            raise UserError(f"{path} lacks inputs {', '.join(missing)}; re-run the export")
        self.past_names, self.present_names = mc.inputs[4:], mc.outputs[1:]
        self.dtype = np.float16 if inputs[self.past_names[0]].type == "tensor(float16)" else np.float32
        logits = next(o for o in self.session.get_outputs() if o.name == LOGITS)
        self.logits_dtype = np.float16 if logits.type == "tensor(float16)" else np.float32
        self._decode_bindings: dict[tuple[int, int, int], DecodeBinding] = {}
        self.pool = ThreadPoolExecutor(self.workers - 1, "shelley-slice") if self.workers > 1 else None
        self.precision = precision
        self.device = "cuda" if self.provider == CUDA else "cpu"
        self._dev = ort.OrtDevice.make(self.device, 0)._get_c_device()
        self._cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
        self.cache = KVCache(mc.n_layer, slots, mc.kv_heads, mc.context_length, mc.head_dim,
                             self.dtype, self._dev, self.device == "cuda")
        log.info("ONNX Runtime %s: %s on %s (%s), %d core(s), KV cache %s, %d slots x %d tokens (%.1f MB "
                 "reserved, resident as written)", ort.__version__, path.name, self.provider, precision, self.workers,
                 self.cache.dtype.name, slots, mc.context_length, self.cache.nbytes / 1e6)

    @property
    def slots(self) -> int:
        return self.cache.slots

    def slices(self, rows: int, plan: Plan | None = None) -> list[tuple[int, int]]:
        """(first row, rows) of each slice a call on rows 0..rows-1 is cut into."""
        k = min(rows, (plan or self.plans.get(rows)).slices)
        bounds = [round(i * rows / k) for i in range(k + 1)]
        return [(a, b - a) for a, b in zip(bounds, bounds[1:])]

    def session_with(self, threads: int) -> ort.InferenceSession:
        """The session whose intra-op pool has `threads` threads (made on first use)."""
        if threads not in self._sessions:
            self._sessions[threads] = ort.InferenceSession(str(self._path), session_options(threads, self._spin),
                                                           providers=self._providers)
        return self._sessions[threads]

    def calibrate(self, past: int = 64) -> str:
        """Time each way to spread a decode step (serving/engine/spread.py) at 1, 2, 4, ...
        rows up to the slots, rows holding `past` cached tokens; returns the one-line summary.
        Run before serving: it writes garbage into the slots' caches."""
        lengths = np.full(self.slots, min(past, self.context - 2), np.int64)
        tokens = np.zeros(self.slots, np.int64)

        def time_step(plan: Plan, rows: int) -> float:
            t0 = time.perf_counter()
            self._decode(tokens[:rows], lengths[:rows], plan)
            return time.perf_counter() - t0
        if self.device == "cpu":
            self.plans.calibrate(time_step, self.slots)
            self._keep_used_sessions()
            self._decode(tokens[:1], lengths[:1], self.plans.get(1))   # a lone row's binding, made now
        return self.plans.summary

    def _keep_used_sessions(self) -> None:
        """Drop the sessions no plan uses: each holds its own copy of the weights (two of the
        87M model's cost ~1 GB). The pooled session stays (one prompt's prefill)."""
        used = {self.plans.get(n).threads for n in range(1, self.slots + 1)} | {self.workers}
        for threads in [t for t in self._sessions if t not in used]:
            del self._sessions[threads]
        self._decode_bindings = {k: b for k, b in self._decode_bindings.items() if k[2] in used}
        self.single = self._sessions.get(1, self.session)
        self.plans.summary += f"; sessions kept: {', '.join(f'{t} thread(s)' for t in sorted(self._sessions))}"

    def _together(self, jobs: list[Callable[[], np.ndarray]]) -> list[np.ndarray]:
        """Run jobs at once: the first on this thread, the rest on the slice threads."""
        if len(jobs) == 1:
            return [jobs[0]()]
        futures = [self.pool.submit(job) for job in jobs[1:]]
        return [jobs[0](), *(f.result() for f in futures)]

    def forward(self, ids: np.ndarray, positions: np.ndarray, seqlens: np.ndarray, total: int,
                first_slot: int = 0, session: ort.InferenceSession | None = None) -> np.ndarray:
        """One graph call on slots [first_slot, first_slot + B): logits (B, T, V) as float32.

        A prefill when T == total (each row from position 0, right-padded); a decode step when
        T == 1; otherwise an extension of one row (B == 1): T new tokens after its cached ones,
        which is all ONNX Runtime's GroupQueryAttention runs with a past and T > 1.
        """
        n = ids.shape[0]
        session = session or self.single
        io = C.SessionIOBinding(session._sess)
        # numpy inputs are bound by pointer: they must (and do) outlive the run
        feeds = (np.ascontiguousarray(ids, np.int64), np.ascontiguousarray(positions, np.int64),
                 np.ascontiguousarray(seqlens, np.int32), np.array(total, np.int32))
        for name, a in zip((INPUT_IDS, POSITION_IDS, SEQLENS, TOTAL_LENGTH), feeds):
            io.bind_input(name, a)
        io.bind_output(LOGITS, self._cpu)
        self.cache.bind(io, self.past_names, self.present_names, first_slot, n)
        session._sess.run_with_iobinding(io, None)
        logits = io.get_outputs()[0].numpy()
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)

    def prefill(self, first_slot: int, prompts: list[list[int]], pad_id: int = 0,
                all_positions: bool = False) -> np.ndarray:
        """Prefill each prompt into its own slot (adjacent slots from first_slot), from
        position 0, right-padded: each row's last-token logits, (n, V), or with `all_positions`
        every position's, (n, T, V) (a prompt's own logprobs; padding after each row's length).
        One prompt runs on the pooled session; several are sliced like a decode step."""
        lengths = np.array([len(p) for p in prompts])
        if lengths.min() < 1 or lengths.max() > self.context:
            raise ValueError(f"prompt lengths must be 1..{self.context}, got {lengths.tolist()}")

        def run(first: int, rows: int, session=None) -> np.ndarray:
            part, width = prompts[first:first + rows], int(lengths[first:first + rows].max())
            ids = np.full((rows, width), pad_id, np.int64)
            for i, p in enumerate(part):
                ids[i, : len(p)] = p
            positions = np.broadcast_to(np.arange(width), ids.shape)
            last = lengths[first:first + rows] - 1
            logits = self.forward(ids, positions, last, width, first_slot + first, session)
            return logits if all_positions else logits[np.arange(rows), last]

        if len(prompts) == 1:
            return run(0, 1, self.session)
        plan = self.plans.get(len(prompts))
        parts, session = self.slices(len(prompts), plan), self.session_with(plan.threads)
        outs = self._together([lambda f=f, r=r: run(f, r, session) for f, r in parts])
        if not all_positions:
            return np.concatenate(outs)
        whole = np.zeros((len(prompts), int(lengths.max()), self.vocab), np.float32)
        for (first, rows), out in zip(parts, outs):
            whole[first:first + rows, :out.shape[1]] = out
        return whole

    def extend(self, slot: int, cached: int, tokens: list[int]) -> np.ndarray:
        """Feed `tokens` to one slot whose cache holds `cached` tokens, in one call: the logits
        after each of them, (len(tokens), V). The cache keeps them at positions cached.. (a
        prompt's uncached suffix, or a speculative draft: dropping its rejected tail later is
        only a shorter length)."""
        n = len(tokens)
        if cached < 1 or cached + n > self.context or n < 1:
            raise ValueError(f"extend needs 1..{self.context} cached + new tokens, got {cached} + {n}")
        total = cached + n
        ids = np.asarray([tokens], np.int64)
        positions = np.arange(cached, total, dtype=np.int64)[None]
        session = self.session_with(self.plans.get(1).threads)    # as a lone row's decode step
        return self.forward(ids, positions, np.array([total - 1]), total, slot, session)[0]

    @property
    def can_copy(self) -> bool:
        """Whether `copy_prefix` works here (CPU buffers); else prefill each slot."""
        return self.cache.can_copy

    def copy_prefix(self, src: int, dst: int, length: int) -> None:
        """Slot dst's cache takes slot src's first `length` positions: a prompt prefilled once
        serves several slots (n choices; prompts sharing a prefix). Cheaper than prefilling
        again (bench/prefill_copy.py)."""
        self.cache.copy(src, dst, length)

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One token for each of rows 0..n-1, whose caches hold `lengths` tokens: logits (n, V).
        Each row writes its new key and value at position lengths[row] (a free slot's row too:
        see SlotTable), so a row must have room: lengths < context."""
        lengths = np.asarray(lengths, np.int64)
        total = int(lengths.max()) + 1
        if total > self.context:
            raise ValueError(f"a row's cache is full ({self.context} tokens); slide it first")
        return self._decode(tokens, lengths, self.plans.get(len(lengths)))

    def _decode(self, tokens: np.ndarray, lengths: np.ndarray, plan: Plan) -> np.ndarray:
        def run(first: int, rows: int) -> np.ndarray:
            b = self._decode_binding(first, rows, plan.threads)
            last = slice(first, first + rows)
            b.ids[:, 0], b.positions[:, 0], b.seqlens[:] = tokens[last], lengths[last], lengths[last]
            # total >= 2 keeps a decode from reading as a prefill (T == total) even when every
            # row is a free slot of length 0.
            b.total[...] = max(int(lengths[last].max()) + 1, 2)
            b.session._sess.run_with_iobinding(b.io, None)
            return b.logits[:, 0]

        parts = self._together([lambda f=f, r=r: run(f, r) for f, r in self.slices(len(lengths), plan)])
        return np.concatenate(parts).astype(np.float32)   # a copy: the buffers are the next step's too

    def _decode_binding(self, first: int, rows: int, threads: int = 1) -> "DecodeBinding":
        """The decode call on rows first..first+rows-1, bound once and reused: every input and
        the logits live in buffers bound by pointer, so a step writes its four small inputs in
        place and runs. Binding afresh every step cost 10-20% of a batch-1 step (measured
        interleaved, same process)."""
        b = self._decode_bindings.get((first, rows, threads))
        if b is None:
            b = self._decode_bindings[first, rows, threads] = DecodeBinding(self, first, rows, self.session_with(threads))
        return b


class DecodeBinding:
    """One IOBinding for decode steps on rows first..first+rows-1, with its own buffers."""

    def __init__(self, rt: Runtime, first: int, rows: int, session: ort.InferenceSession):
        self.session = session
        self.io = C.SessionIOBinding(self.session._sess)
        self.ids = np.zeros((rows, 1), np.int64)
        self.positions = np.zeros((rows, 1), np.int64)
        self.seqlens = np.zeros(rows, np.int32)
        self.total = np.zeros((), np.int32)
        for name, a in ((INPUT_IDS, self.ids), (POSITION_IDS, self.positions), (SEQLENS, self.seqlens),
                        (TOTAL_LENGTH, self.total)):
            self.io.bind_input(name, rt._cpu, a.dtype, list(a.shape), a.ctypes.data)
        self.logits = np.zeros((rows, 1, rt.vocab), rt.logits_dtype)
        self.io.bind_output(LOGITS, rt._cpu, self.logits.dtype, list(self.logits.shape), self.logits.ctypes.data)
        rt.cache.bind(self.io, rt.past_names, rt.present_names, first, rows)
