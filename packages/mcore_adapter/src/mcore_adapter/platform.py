"""Running megatron-core without CUDA: every CPU workaround lives here, applied only when CUDA
is absent, so that tests and `verify` run on CPU machines (gloo) with the same model code.

megatron-core assumes a GPU in a few places that matter for the dense GPT path:
- ``torch.cuda.current_device()`` is used as a device for buffers (rotary ``inv_freq``, the
  global memory buffer of attention): it must name the CPU;
- ``model_parallel_cuda_manual_seed`` seeds CUDA RNG states: on CPU we ask for the inference
  tracker, which keeps plain torch RNG state;
- dist_checkpointing calls ``torch.cuda.synchronize()`` when saving: a no-op on CPU;
- ``Tensor.cuda()`` moves tensors to "the" device (tied embeddings over pipeline stages are
  all-reduced after ``weight.data.cuda()``): on CPU it returns the tensor itself;
- causal and sliding-window masks are built on "cuda": callers pass an explicit causal mask
  (``causal_attention_mask``) and the sliding-window builder is replaced by a device-free one.
"""

from __future__ import annotations

import functools

import torch

CPU = torch.device("cpu")


def has_cuda() -> bool:
    return torch.cuda.is_available()


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if has_cuda() else CPU


def _sliding_window_causal_mask(sq: int, skv: int, window_size: tuple[int, int]) -> torch.Tensor:
    # Same mask as megatron.core.transformer.utils.get_sliding_window_causal_mask, on the CPU.
    m = torch.ones(sq, skv, dtype=torch.bool)
    upper = torch.triu(m, diagonal=skv - sq - window_size[0])
    return ~torch.tril(upper, diagonal=skv - sq + window_size[1])


@functools.cache
def apply_cpu_shims() -> bool:
    """Patch megatron-core for CPU execution; a no-op (returns False) when CUDA is available."""
    if has_cuda():
        return False
    torch.cuda.current_device = lambda: CPU  # type: ignore[assignment]
    # dist_checkpointing's filesystem writer synchronizes CUDA before copying tensors out.
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]

    from megatron.core.fusions import fused_softmax

    fused_softmax.get_sliding_window_causal_mask = _sliding_window_causal_mask
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
