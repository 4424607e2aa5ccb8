"""``megatron_train`` / ``megatron_infer``: mcore_adapter's Megatron-Core model of a checkpoint
(HF or MCA) in the job's parallel layout, trainable or frozen."""

from __future__ import annotations

from ..model_providers import ModelArgs, ProviderError, check_model_args
from .hf import torch_dtype


def _build(model_args: ModelArgs):
    # before megatron's import (12-20 s); LoRA on Megatron is not built yet: refused, not ignored
    check_model_args(
        model_args, "megatron", unused=("deepspeed", "lora", "optimizer", "gradient_checkpointing")
    )
    from mcore_adapter import AutoModel
    from mcore_adapter.parallel import initialize_model_parallel

    layout = {k: v for k, v in model_args.layout.items() if v is not None}
    initialize_model_parallel(**layout)  # keeps a layout the job already initialized
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


def megatron_train(model_args: ModelArgs, is_trainable: bool = True):
    model = _build(model_args)
    model.train()
    return model


def megatron_infer(model_args: ModelArgs, is_trainable: bool = False):
    model = _build(model_args)
    model.eval().requires_grad_(False)
    return model
