"""The in-place KV cache: per layer one key and one value buffer [slots, kv_heads, context,
head_dim], bound by pointer as both the graph's past and present (serving/engine/runtime.py).

    cache = KVCache(n_layer=4, slots=64, kv_heads=4, context=256, head_dim=64, dtype=np.float32,
                    device=cpu, on_cuda=False)
    cache.bind(io, past_names, present_names, first=3, n=2)   # slots 3 and 4: a pointer offset
    cache.copy(src=3, dst=5, length=40)                        # n choices: one prefill, copied
    cache.resident_bytes()                                     # what the slots' tokens occupy now

Memory that fits the work (issue 25): on the CPU each buffer is its own private anonymous
memory map, so the kernel gives it a page only where a token's key or value has been
written: a slot that served a 200-token request holds ~200 positions, not its full context,
and 64 slots reserve address space, not memory. numpy's own allocation would not do: it asks
for transparent huge pages on large arrays (madvise), so the first token written into a slot
made 2 MiB resident, the rows of 8 slots of the 3.7M model at once; here huge pages are
refused (MADV_NOHUGEPAGE) and residency grows 4 KiB at a time (16 positions of a 64-wide fp32
head, 32 of an fp16 one). `release(slot)` gives a slot's pages back (they read as zeros
again). The layout stays [slots, heads, context, head_dim] as GroupQueryAttention reads it, so
decode stays in place and zero-copy. On CUDA the buffers are OrtValues in GPU memory,
allocated whole. The dtype is the graph's past_key_values type: float32, or float16 for an
artifact exported with `--kv-dtype fp16` (half the bytes, resident or reserved).
"""
from __future__ import annotations

import mmap

import numpy as np
from onnxruntime.capi import _pybind_state as C


class KVCache:
    """A run of adjacent slots is one contiguous block of every buffer, so binding slots
    [first, first + n) is a pointer offset, never a copy."""

    def __init__(self, n_layer: int, slots: int, kv_heads: int, context: int, head_dim: int,
                 dtype: type, device: C.OrtDevice, on_cuda: bool):
        self.slots, self.dtype, self.device = slots, np.dtype(dtype), device
        self.row_shape = (kv_heads, context, head_dim)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        shape = (slots, *self.row_shape)
        self.nbytes = 2 * n_layer * slots * self.row_bytes
        self._maps: list[mmap.mmap] = []
        if on_cuda:
            self._values = [C.OrtValue.ortvalue_from_shape_and_type(shape, self.dtype, device)
                            for _ in range(2 * n_layer)]
            self._host = None
            self._ptrs = [v.data_ptr() for v in self._values]
        else:
            self._host = [self._lazy_zeros(shape) for _ in range(2 * n_layer)]
            self._ptrs = [a.ctypes.data for a in self._host]

    def _lazy_zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        """Zeros whose pages exist only once written (anonymous map, 4 KiB pages)."""
        count = int(np.prod(shape))
        m = mmap.mmap(-1, max(1, count * self.dtype.itemsize), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            m.madvise(mmap.MADV_NOHUGEPAGE)
        self._maps.append(m)
        return np.frombuffer(m, self.dtype, count=count).reshape(shape)

    def bind(self, io: C.SessionIOBinding, past: list[str], present: list[str], first: int, n: int) -> None:
        if first < 0 or first + n > self.slots:
            raise ValueError(f"slots {first}..{first + n - 1} are outside the cache's {self.slots}")
        shape, elem = (n, *self.row_shape), self.dtype
        for name_in, name_out, base in zip(past, present, self._ptrs):
            ptr = base + first * self.row_bytes
            io.bind_input(name_in, self.device, elem, shape, ptr)
            io.bind_output(name_out, self.device, elem, shape, ptr)

    @property
    def can_copy(self) -> bool:
        return self._host is not None

    def copy(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot src into slot dst, keys and values of every
        layer: dst then holds what prefilling src's first `length` tokens would have written.
        CPU buffers only (on CUDA, callers prefill instead: `can_copy` is False)."""
        if not self.can_copy:
            raise NotImplementedError("copying between slots is implemented for CPU buffers only")
        if not (0 <= src < self.slots and 0 <= dst < self.slots and 0 <= length <= self.row_shape[1]):
            raise ValueError(f"cannot copy {length} positions from slot {src} to slot {dst} "
                             f"({self.slots} slots of {self.row_shape[1]})")
        for buf in self._host:
            buf[dst, :, :length] = buf[src, :, :length]

    def release(self, slot: int) -> None:
        """Give the slot's pages back to the system (CPU; they read as zeros afterwards)."""
        if self._host is None:
            return
        page = mmap.PAGESIZE
        for m in self._maps:
            start = -(-slot * self.row_bytes // page) * page            # whole pages inside the row
            end = (slot + 1) * self.row_bytes // page * page
            if end > start:
                m.madvise(mmap.MADV_DONTNEED, start, end - start)

    def resident_bytes(self) -> int:
        """Bytes of the CPU buffers in memory now (mincore); 0 on CUDA or where unknown."""
        if self._host is None:
            return 0
        import ctypes
        libc, page, total = ctypes.CDLL(None, use_errno=True), mmap.PAGESIZE, 0
        for a in self._host:
            pages = -(-a.nbytes // page)
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(a.ctypes.data), ctypes.c_size_t(a.nbytes), vec) != 0:
                return 0
            total += int((np.frombuffer(vec, np.uint8) & 1).sum()) * page
        return total

    def host(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, values) of a layer as numpy arrays (CPU: the buffers themselves; tests)."""
        if self._host is not None:
            return self._host[2 * layer], self._host[2 * layer + 1]
        return self._values[2 * layer].numpy(), self._values[2 * layer + 1].numpy()
