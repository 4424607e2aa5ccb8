"""Process group and model-parallel set-up shared by models, tests and the CLI."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch.distributed as dist

from . import platform
from .models.converter.layout import ParallelLayout


def init_process_group() -> None:
    """Join the job described by torchrun's environment, or form a single-process group."""
    if dist.is_initialized():
        return
    backend = "nccl" if platform.has_cuda() else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def initialize_model_parallel(
    layout: ParallelLayout | Mapping[str, Any] | None = None, seed: int = 1234, **sizes: Any
) -> None:
    """Initialize megatron's parallel state once, for ``layout`` (a ``ParallelLayout``, or its
    sizes by name: ``initialize_model_parallel(tp=2, pp=2)``); an existing layout is kept as it
    is. The world size must be a multiple of ``layout.world_size``."""
    if layout is not None and sizes:
        raise TypeError("give the layout either as a ParallelLayout or as sizes by name, not both")
    layout = ParallelLayout.of(layout if layout is not None else sizes)
    platform.quiet_cpu_noise()
    from megatron.core import parallel_state

    platform.apply_cpu_shims()
    init_process_group()
    if parallel_state.model_parallel_is_initialized():
        return
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp,
        expert_model_parallel_size=layout.ep,
        expert_tensor_parallel_size=layout.etp,
    )
    platform.model_parallel_seed(seed)


def is_rank_zero() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0
