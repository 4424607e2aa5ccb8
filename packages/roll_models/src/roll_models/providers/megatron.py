"""``megatron_train`` / ``megatron_infer``: mcore_adapter's Megatron-Core model of a checkpoint
(HF or MCA) in the job's parallel layout, trainable or frozen."""

from __future__ import annotations

import os
import sys

from ..model_providers import ModelArgs, ProviderError, check_model_args
from .hf import torch_dtype


def _build(model_args: ModelArgs):
    # before megatron's import (12-20 s); LoRA on Megatron is not built yet: refused, not ignored
    check_model_args(
        model_args, "megatron", unused=("deepspeed", "lora", "optimizer", "gradient_checkpointing")
    )
    from mcore_adapter.models.converter.layout import ParallelLayout

    layout = ParallelLayout.of(model_args.layout)
    _check_world_size(layout, model_args.layout)
    from mcore_adapter import AutoModel
    from mcore_adapter.parallel import initialize_model_parallel

    initialize_model_parallel(layout)  # keeps a layout the job already initialized
    model = AutoModel.from_pretrained(
        model_args.model_name_or_path, dtype=torch_dtype(model_args.dtype), **model_args.extra
    )
    head = model.config.output_head or "lm"
    if head != model_args.head:
        raise ProviderError(
            f"{model_args.model_name_or_path} holds a {head!r} model, {model_args.head!r} was asked for; on "
            "Megatron a value or reward model loads from a checkpoint with that head (transformers' "
            "token or sequence classification with one label)"
        )
    return model


def _check_world_size(layout, given) -> None:
    """Megatron needs a rank per model-parallel slice; a process started on its own is a job of
    one rank (mcore_adapter forms that group), which Megatron would refuse with a bare
    "world_size (1) is not divisible by 2". Refused here, before Megatron is imported, with how
    to launch."""
    import torch.distributed as dist

    least = layout.world_size
    if dist.is_initialized():
        world = dist.get_world_size()
    else:  # what mcore_adapter.parallel.init_process_group will join: torchrun's job, or one rank
        world = int(os.environ["WORLD_SIZE"]) if {"RANK", "WORLD_SIZE"} <= set(os.environ) else 1
    if world % least:
        script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "your_script.py"
        raise ProviderError(
            f"model_args.layout {given} needs {least} ranks (or a multiple), but this job has world size "
            f"{world}; start one process per rank, e.g. `torchrun --nproc-per-node {least} {script}` "
            "(on CPU the ranks talk over gloo)"
        )


def megatron_train(model_args: ModelArgs, is_trainable: bool = True):
    model = _build(model_args)
    model.train()
    return model


def megatron_infer(model_args: ModelArgs, is_trainable: bool = False):
    model = _build(model_args)
    model.eval().requires_grad_(False)
    return model
