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
  (``causal_attention_mask``) and the sliding-window builder is replaced by a device-free one;
- the alltoall token dispatcher and overlapped shared experts copy routing counts on a side
  CUDA stream: streams and events become no-ops, and the dispatcher's "to host" helper hands
  back numpy for tensors already on the host (it does so only for CUDA tensors).

Without Transformer Engine (always on CPU, possibly on a GPU machine) Megatron's local layer
spec needs more fixes: for mixture-of-experts and multi-latent attention, and a zero-centered
RMSNorm (``apply_local_spec_fixes``).

Without flash-linear-attention (its Triton kernels do not run on CPU) Megatron's Gated DeltaNet
gets torch implementations of the chunked gated delta rule and of l2norm
(``apply_gated_delta_net_fallback``).

It also keeps a CPU run's output readable (``quiet_cpu_noise``): megatron-core warns at import
that Transformer Engine and Apex are missing (they cannot exist on CPU) and about CUDA settings,
and transformers draws progress bars for loading a tiny model.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings

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
    """Patch megatron-core for CPU execution; a no-op (returns False) when CUDA is available."""
    if has_cuda():
        return False
    torch.cuda.current_device = lambda: CPU  # type: ignore[assignment]
    # dist_checkpointing's filesystem writer synchronizes CUDA before copying tensors out.
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]

    from megatron.core.fusions import fused_softmax

    fused_softmax.get_sliding_window_causal_mask = _sliding_window_causal_mask
    torch.cuda.Stream = _HostStream  # type: ignore[assignment, misc]
    torch.cuda.Event = _HostEvent  # type: ignore[assignment, misc]
    torch.cuda.current_stream = lambda device=None: _HOST_STREAM  # type: ignore[assignment]
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()  # type: ignore[assignment]

    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    to_host = moe_utils.maybe_move_tensor_to_cpu

    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        # Megatron converts to numpy only when it copies from CUDA; the alltoall dispatcher
        # needs the numpy form (split sizes) either way.
        out = to_host(tensor, as_numpy=as_numpy, record_stream=record_stream)
        return out.numpy() if as_numpy and torch.is_tensor(out) else out

    token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    return True


class _HostEvent:
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


class _HostStream(_HostEvent):
    """A CUDA stream stand-in (see ``_HostEvent``)."""

    def wait_stream(self, stream) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None) -> _HostEvent:
        return event or _HostEvent()


_HOST_STREAM = _HostStream()


@functools.cache
def apply_local_spec_fixes() -> None:
    """Fixes for Megatron's local (non Transformer Engine) layer spec with mixture-of-experts
    and multi-latent attention, in megatron-core 0.16.1. Applied whenever a model is built
    with the local spec."""
    from megatron.core.models.backends import LocalSpecProvider
    from megatron.core.transformer import multi_latent_attention
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.moe import moe_utils

    # The router's GEMM checks `te_general_gemm is not None`, a name that only exists when the
    # Transformer Engine import succeeded.
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    # MLA takes the TE branch when its (mocked) TE import "succeeds" without TE installed.
    if not _have_transformer_engine():
        multi_latent_attention.HAVE_TE = False

    class LocalCoreAttention(DotProductAttention):
        """The local core attention, accepting the per-head q/k and v widths that MLA passes
        (TE's attention takes them); the widths follow from the tensors themselves here."""

        def __init__(self, *args, k_channels=None, v_channels=None, **kwargs):
            super().__init__(*args, **kwargs)

    LocalSpecProvider.core_attention = lambda self: LocalCoreAttention
    _zero_centered_local_norm()


class ZeroCenteredRMSNorm(torch.nn.Module):
    """RMSNorm scaling by ``1 + weight`` (Megatron's ``layernorm_zero_centered_gamma``), which
    Megatron's local norm (``WrappedTorchNorm``) refuses; Transformer Engine's norms do it."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)


def _zero_centered_local_norm() -> None:
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    plain = WrappedTorchNorm.__new__  # (applied once: apply_local_spec_fixes is cached)

    def new(cls, config, hidden_size, eps=1e-5, *args, **kwargs):
        if config.layernorm_zero_centered_gamma and config.normalization == "RMSNorm":
            return ZeroCenteredRMSNorm(hidden_size, eps)
        return plain(cls, config, hidden_size, eps, *args, **kwargs)

    WrappedTorchNorm.__new__ = new


@functools.cache
def apply_gated_delta_net_fallback() -> bool:
    """Give Megatron's ``GatedDeltaNet`` torch kernels when flash-linear-attention is missing
    (returns whether it did); with fla installed nothing changes.

    megatron-core 0.16.1 refuses to build the layer without fla, yet ships the torch version of
    the chunked gated delta rule (``torch_chunk_gated_delta_rule``, the math of transformers'
    Qwen3-Next fallback, used in its deterministic mode); the l2norm is transformers'."""
    from megatron.core.ssm import gated_delta_net

    if gated_delta_net.HAVE_FLA:
        return False

    def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
        return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)

    gated_delta_net.l2norm = l2norm
    gated_delta_net.chunk_gated_delta_rule = gated_delta_net.torch_chunk_gated_delta_rule
    gated_delta_net.HAVE_FLA = True
    return True


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
