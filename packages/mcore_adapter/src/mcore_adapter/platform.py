"""Running megatron-core without CUDA, or without Transformer Engine: this module tells which
case it is and applies, once, the workarounds each case needs; the workarounds themselves live in
``mcore_adapter.compat`` (one module per dependency, each declared with the releases it was
checked against), so that tests and ``verify`` run on CPU machines (gloo) with the same model code.

- Without CUDA (``apply_cpu_shims``): megatron-core assumes a GPU in a few places that matter for
  the dense GPT path and the MoE dispatchers (``compat.torch``: ``torch.cuda`` calls answered by
  the host; ``compat.megatron``: the sliding-window mask and the dispatcher's host copies). On CPU
  ``model_parallel_seed`` asks for the inference RNG tracker, which keeps plain torch RNG state,
  and callers pass an explicit causal mask (``causal_attention_mask``).
- Without Transformer Engine (always on CPU, possibly on a GPU machine): Megatron's local layer
  spec, with our modules where megatron's lack something (``models/local_spec.py``), and the
  names its MoE router and MLA read at run time (``apply_local_spec_fixes``).
- Without flash-linear-attention: ``models/local_spec.py`` builds Megatron's Gated DeltaNet on
  torch kernels; ``apply_gated_delta_net_fallback`` puts them into megatron's module instead,
  for code that builds that layer itself.

It also keeps a CPU run's output readable (``quiet_cpu_noise``): megatron-core warns at import
that Transformer Engine and Apex are missing (they cannot exist on CPU) and about CUDA settings,
and transformers draws progress bars for loading a tiny model.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

import torch

from .compat import megatron as megatron_compat
from .compat import torch as torch_compat

CPU = torch.device("cpu")


def has_cuda() -> bool:
    return torch.cuda.is_available()


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if has_cuda() else CPU


# Warnings megatron-core gives on every CPU machine: nothing a user can act on.
_CPU_NOISE = (
    r"(Transformer Engine and )?Apex (is|are) not installed",
    r"Transformer Engine is not installed",
    r"When using async grad allreduce it is recommended to set the environment variable CUDA_DEVICE_MAX_CONNECTIONS",
    r"full scope is deprecated",  # megatron's own default of cuda_graph_scope
    r"`torch\.distributed\.all_gather_into_tensor` is deprecated",  # called inside megatron
    r"`torch\.distributed\.reduce_scatter_tensor` is deprecated",  # megatron's MoE dispatchers
    r"Warning: tp_group is None, using default tp group",
)


@functools.cache
def quiet_cpu_noise() -> None:
    """Silence, on CPU only, the warnings above and transformers' progress bars. Call it before
    megatron.core or transformers is imported (``mcore_adapter``'s lazy names and
    ``initialize_model_parallel`` do); spawned ranks inherit the environment variable."""
    if has_cuda():
        return
    for message in _CPU_NOISE:
        warnings.filterwarnings("ignore", message=message)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by transformers at import
    # transformers imports DeepSpeed's integration, whose accelerator detection otherwise logs
    # "Setting accelerator to CPU" (to stdout) in every process.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@functools.cache
def apply_cpu_shims() -> bool:
    """Patch torch and megatron-core for CPU execution; a no-op (returns False) when CUDA is
    available."""
    if has_cuda():
        return False
    torch_compat.run_cuda_calls_on_host(CPU)
    megatron_compat.apply_cpu_workarounds()
    return True


@functools.cache
def apply_local_spec_fixes() -> None:
    """What Megatron's local (non Transformer Engine) spec needs process-wide, for mixture-of-
    experts and multi-latent attention. Applied whenever a model is built with the local spec."""
    megatron_compat.apply_local_spec_workarounds(have_transformer_engine=_have_transformer_engine())


@functools.cache
def apply_gated_delta_net_fallback() -> bool:
    """Give megatron's ``gated_delta_net`` module torch kernels when flash-linear-attention is
    missing (returns whether it did); with fla installed nothing changes. Process-wide, for code
    that builds megatron's ``GatedDeltaNet`` itself: our models do not call it (see
    ``compat.megatron.install_gated_delta_net_kernels``)."""
    return megatron_compat.install_gated_delta_net_kernels()


def _have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def model_parallel_seed(seed: int) -> None:
    """Seed megatron's RNG trackers, without touching CUDA RNG state on CPU."""
    from megatron.core import tensor_parallel

    if has_cuda():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        torch.manual_seed(seed)
        tensor_parallel.model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True)


def causal_attention_mask(seq_len: int, device: torch.device | None = None) -> torch.Tensor:
    """Megatron's boolean mask convention ([1, 1, s, s], True = masked out)."""
    return torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=device), diagonal=1)[None, None]
