"""Logits parity between the Megatron model built from an HF checkpoint and the HF model
itself (transformers, fp32, eager attention), at any parallel layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def random_tokens(vocab_size: int, batch_size: int = 2, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)


def hf_logits(hf_dir: str | os.PathLike, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(tokens).logits


def megatron_logits(models: Any, tokens: torch.Tensor) -> torch.Tensor | None:
    """Logits on the last pipeline stage, ``None`` elsewhere."""
    from .models.pipeline import forward_logits

    models = list(models) if isinstance(models, torch.nn.ModuleList) else [models]
    for model in models:
        model.eval()
    with torch.no_grad():
        return forward_logits(models, tokens)


def max_abs_diff_with_hf(
    models: Any, hf_dir: str | os.PathLike, batch_size: int = 2, seq_len: int = 16, seed: int = 0
) -> float:
    """Max |logits diff| on the same random tokens, agreed by every rank. Collective."""
    import torch.distributed as dist

    tokens = random_tokens(models_config(models).vocab_size, batch_size, seq_len, seed)
    actual = megatron_logits(models, tokens)
    from megatron.core import parallel_state

    diff = torch.zeros(())
    if actual is not None and parallel_state.get_tensor_model_parallel_rank() == 0:
        diff.fill_((actual.float() - hf_logits(hf_dir, tokens)).abs().max())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return diff.item()


def models_config(models: Any):
    return models.config if hasattr(models, "config") else models[0].config


def verify_rank(hf_dir: str, layout: dict[str, Any], batch_size: int, seq_len: int, seed: int) -> float:
    """One rank of ``mcore-adapter verify``: build the model at ``layout`` and compare."""
    from . import AutoModel
    from .parallel import initialize_model_parallel

    initialize_model_parallel(tp=layout["tp"], pp=layout["pp"], vpp=layout.get("vpp"))
    uneven = {k: v for k, v in layout.items() if k.startswith("num_layers_in_") and v is not None}
    models = AutoModel.from_pretrained(hf_dir, dtype=torch.float32, **uneven)
    return max_abs_diff_with_hf(models, hf_dir, batch_size, seq_len, seed)


def verify(
    hf_dir: str | os.PathLike, layout: dict[str, Any], batch_size: int = 2, seq_len: int = 16, seed: int = 0
) -> float:
    """Max |logits diff| at ``layout`` (``tp``, ``pp``, ``vpp``, uneven split); more than one
    rank is launched here as local processes (gloo on CPU)."""
    world = layout["tp"] * layout["pp"]
    args = (str(Path(hf_dir)), layout, batch_size, seq_len, seed)
    if world == 1:
        return verify_rank(*args)
    from .launch import launch

    return launch(verify_rank, world, *args)[0]
