"""``torch.cuda`` calls that megatron-core makes on a machine without CUDA, answered by the host.
``platform.apply_cpu_shims`` applies them, and only where CUDA is absent.

Declared for torch 2.6 (the package's floor) up to 3, checked with 2.13: the ``torch.cuda``
names replaced here have kept their meaning through 2.x.
"""

from __future__ import annotations

import contextlib

import torch

from .workaround import Workaround

TORCH = "torch"
VERSIONS = ">=2.6,<3"

CURRENT_DEVICE = Workaround(
    "current CUDA device is the CPU",
    TORCH,
    VERSIONS,
    ("torch:cuda.current_device",),
    "megatron makes buffers on torch.cuda.current_device(): rotary inv_freq, attention's global buffer",
)
SYNCHRONIZE = Workaround(
    "CUDA synchronize is a no-op",
    TORCH,
    VERSIONS,
    ("torch:cuda.synchronize",),
    "dist_checkpointing's filesystem writer synchronizes CUDA before copying tensors out",
)
TENSOR_CUDA = Workaround(
    "Tensor.cuda() stays on the host",
    TORCH,
    VERSIONS,
    ("torch:Tensor.cuda",),
    "tied embeddings over pipeline stages are all-reduced after weight.data.cuda()",
)
STREAMS = Workaround(
    "CUDA streams and events are host no-ops",
    TORCH,
    VERSIONS,
    ("torch:cuda.Stream", "torch:cuda.Event", "torch:cuda.current_stream", "torch:cuda.stream"),
    "the alltoall token dispatcher and overlapped shared experts copy routing counts on a side stream",
)

WORKAROUNDS = (CURRENT_DEVICE, SYNCHRONIZE, TENSOR_CUDA, STREAMS)


class HostEvent:
    """A CUDA event stand-in: on the host every operation has completed when it returns."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait(self, stream=None) -> None:
        pass

    def query(self) -> bool:
        return True


class HostStream(HostEvent):
    """A CUDA stream stand-in (see ``HostEvent``)."""

    def wait_stream(self, stream) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None) -> HostEvent:
        return event or HostEvent()


HOST_STREAM = HostStream()


def run_cuda_calls_on_host(cpu: torch.device) -> None:
    """Every workaround above, process-wide."""
    CURRENT_DEVICE.patch("torch:cuda.current_device", lambda: cpu)
    SYNCHRONIZE.patch("torch:cuda.synchronize", lambda device=None: None)
    TENSOR_CUDA.patch("torch:Tensor.cuda", lambda self, *args, **kwargs: self)
    STREAMS.patch("torch:cuda.Stream", HostStream)
    STREAMS.patch("torch:cuda.Event", HostEvent)
    STREAMS.patch("torch:cuda.current_stream", lambda device=None: HOST_STREAM)
    STREAMS.patch("torch:cuda.stream", lambda stream=None: contextlib.nullcontext())


def dcp_storage_info() -> type:
    """torch's distributed-checkpoint storage record (the private ``_StorageInfo``), which the
    metadata allowlist (``converter/untrusted.py``) lets through and checks; kept here so that a
    torch that renames it fails in one place."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    return _StorageInfo
