"""Process group and model-parallel set-up shared by models, tests and the CLI."""

from __future__ import annotations

import math
import os

import torch.distributed as dist

from . import platform


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
    tp: int = 1,
    pp: int = 1,
    vpp: int | None = None,
    seed: int = 1234,
    ep: int = 1,
    etp: int | None = None,
) -> None:
    """Initialize megatron's parallel state once; an existing layout is kept as it is. The
    world size must be a multiple of pp x lcm(tp, etp x ep) (``world_size`` gives the least)."""
    platform.quiet_cpu_noise()
    from megatron.core import parallel_state

    platform.apply_cpu_shims()
    init_process_group()
    if parallel_state.model_parallel_is_initialized():
        return
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        expert_model_parallel_size=ep,
        expert_tensor_parallel_size=etp,
    )
    platform.model_parallel_seed(seed)


def is_rank_zero() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size(tp: int = 1, pp: int = 1, ep: int = 1, etp: int | None = None) -> int:
    """The least number of ranks that runs a layout: each pipeline stage needs every dense slice
    (tp) and every expert slice of every expert-parallel rank (etp x ep)."""
    return pp * math.lcm(tp, (etp or tp) * ep)
