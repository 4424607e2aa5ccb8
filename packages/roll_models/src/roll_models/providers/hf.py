"""``hf_infer``: the transformers model of a checkpoint, for inference (a reference model)."""

from __future__ import annotations

import importlib.util
from typing import Any

from ..model_providers import ModelArgs, ProviderError, check_model_args, load_config


def attn_implementation(requested: str | None) -> str:
    """``flash_attention_2`` when flash-attn is importable, else ``sdpa``: transformers raises,
    rather than falls back, when asked for flash attention it does not have."""
    if requested is not None:
        if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ProviderError(
                "attn_implementation='flash_attention_2' needs flash-attn, which is not installed"
            )
        return requested
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


def auto_class(config: Any, head: str = "lm"):
    """The Auto class that builds this config's model: a value or reward head's class, else
    image-text-to-text for a vision-language config, causal LM otherwise."""
    import sys

    import transformers

    if not sys.stderr.isatty():  # a bar's frames are noise in a log or a pipe
        transformers.utils.logging.disable_progress_bar()
    if head != "lm":
        from mcore_adapter.models.converter.config_map import OUTPUT_HEADS

        if head not in OUTPUT_HEADS:
            raise ProviderError(f"head {head!r} is not one of 'lm', {', '.join(map(repr, OUTPUT_HEADS))}")
        return getattr(transformers, OUTPUT_HEADS[head].auto_class)
    if getattr(config, "vision_config", None) is not None:
        return transformers.AutoModelForImageTextToText
    return transformers.AutoModelForCausalLM


def torch_dtype(name: Any):
    import torch

    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ProviderError(f"dtype {name!r} is not a torch dtype (e.g. 'bfloat16', 'float32')")
    return dtype


def hf_infer(model_args: ModelArgs, is_trainable: bool = False):
    if is_trainable:
        raise ProviderError("hf_infer provides models for inference; train with a *_train strategy")
    check_model_args(
        model_args, "hf", unused=("layout", "deepspeed", "lora", "optimizer", "gradient_checkpointing")
    )
    config = load_config(model_args.model_name_or_path)
    extra = {"num_labels": 1} if model_args.head != "lm" else {}
    model = auto_class(config, model_args.head).from_pretrained(
        model_args.model_name_or_path,
        **extra,
        dtype=torch_dtype(model_args.dtype),
        attn_implementation=attn_implementation(model_args.attn_implementation),
        **model_args.extra,
    )
    model.eval().requires_grad_(False)
    return model
