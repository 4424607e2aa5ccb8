"""Memory reused from one weight to the next.

A converter that moves one weight at a time would otherwise take fresh memory for every
tensor it reads or rearranges, and fresh memory costs a page fault per 4 KiB page on first
touch: large allocations are mapped anew by the C allocator each time and unmapped when freed.
Measured here, reading 1 GB of page cache into fresh tensors took 0.65-0.78 s, into memory
touched before 0.18-0.22 s. ``Scratch`` hands out views of one buffer instead, and takes a new
one only when the last view is still held by someone (the buffer is then theirs to keep).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from collections.abc import Sequence

import torch


def _use_count(buffer: torch.Tensor) -> int | None:
    # How many tensors share the buffer's storage. torch has no public API for it; without the
    # private one every request gets fresh memory (correct, only slower).
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return None if use_count is None else use_count(buffer.untyped_storage()._cdata)


class Scratch:
    """One reusable buffer; ``take`` returns a tensor in it, valid while the caller holds it."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None
        self._idle_count: int | None = None

    def _idle(self) -> bool:
        return self._idle_count is not None and _use_count(self._buffer) == self._idle_count

    def take(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized tensor of ``shape`` and ``dtype``: a view of the buffer when no earlier
        view is alive, else fresh memory."""
        nbytes = math.prod(shape) * dtype.itemsize
        if self._buffer is None or self._buffer.numel() < nbytes or not self._idle():
            self._buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8)
            self._idle_count = _use_count(self._buffer)
        return self._buffer[:nbytes].view(dtype).view(tuple(shape))

    def contiguous(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``tensor`` as a contiguous tensor of ``dtype`` (its own dtype by default): itself when
        it already is one, else a copy in the buffer."""
        dtype = dtype or tensor.dtype
        if tensor.is_contiguous() and tensor.dtype == dtype:
            return tensor
        return self.take(tensor.shape, dtype).copy_(tensor)


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep and reuse freed blocks of up to 32 MiB (its largest mmap
    threshold) and up to 512 MiB of freed heap, instead of unmapping them and faulting in fresh
    zeroed pages for the next weight's. For a converter process (the CLI's ``convert``), never a
    library caller's: it is process-wide. Measured on a 4 GB MCA -> HF conversion: 3.7 s -> 2.8 s
    in process, most of it in ``pwrite``, which competes for fresh pages with the page faults.
    Returns whether it applied (not glibc: no)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 512 << 20))
