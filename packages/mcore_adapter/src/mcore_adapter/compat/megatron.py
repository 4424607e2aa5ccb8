"""Where megatron-core 0.16 falls short for our models, and what stands in.

- On CPU (``apply_cpu_workarounds``, from ``platform.apply_cpu_shims``): the sliding-window
  mask is built on "cuda"; the alltoall dispatcher's "to host" helper hands back numpy only for
  tensors it copies from CUDA.
- Without Transformer Engine (``apply_local_spec_workarounds``): the router's GEMM and MLA read
  Transformer Engine names that do not exist, or say it is there when it is not.
- Megatron's local modules lack what our families use (zero-centered RMSNorm, MLA's per-head
  widths): ``models/local_spec.py`` supplies its own, under the declarations below.
- Without flash-linear-attention Megatron refuses to build ``GatedDeltaNet``, yet ships the torch
  chunked delta rule: ``gated_delta_net_on_torch_kernels`` runs Megatron's own layer code with
  torch kernels, leaving Megatron's module (and its ``HAVE_FLA``) untouched.
- torch_dist loading (``torch_dist_reader``, from ``models/dist_checkpoint.py``): Megatron builds
  its checkpoint reader in a module-level function with no way to pass one.

Nothing here imports megatron until a workaround is applied.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .workaround import Workaround

MEGATRON = "megatron-core"
# The only release checked (the newest that installs on Python 3.11).
VERSIONS = ">=0.16.1,<0.17"

_GDN = "megatron.core.ssm.gated_delta_net"

SLIDING_WINDOW_MASK = Workaround(
    "sliding-window mask built on the host",
    MEGATRON,
    VERSIONS,
    ("megatron.core.fusions.fused_softmax:get_sliding_window_causal_mask",),
    "megatron's sliding-window causal mask is built on 'cuda'",
)
DISPATCHER_NUMPY_ON_HOST = Workaround(
    "alltoall dispatcher's host copies as numpy",
    MEGATRON,
    VERSIONS,
    (
        "megatron.core.transformer.moe.token_dispatcher:maybe_move_tensor_to_cpu",
        "megatron.core.transformer.moe.moe_utils:maybe_move_tensor_to_cpu",
    ),
    "the alltoall dispatcher needs its split sizes as numpy; megatron converts only CUDA tensors",
)
ROUTER_GEMM_WITHOUT_TE = Workaround(
    "router GEMM without Transformer Engine",
    MEGATRON,
    VERSIONS,
    ("megatron.core.transformer.moe.moe_utils:RouterGatingLinearFunction.forward reads te_general_gemm",),
    "the router checks `te_general_gemm is not None`, a name that exists only when TE imports",
)
MLA_WITHOUT_TE = Workaround(
    "multi-latent attention without Transformer Engine",
    MEGATRON,
    VERSIONS,
    ("megatron.core.transformer.multi_latent_attention:HAVE_TE",),
    "MLA takes its TE branch when megatron's mocked TE import 'succeeds' without TE installed",
)
LOCAL_CORE_ATTENTION = Workaround(
    "local core attention taking MLA's k/v widths",
    MEGATRON,
    VERSIONS,
    (
        "megatron.core.models.backends:LocalSpecProvider.core_attention",
        "megatron.core.transformer.dot_product_attention:DotProductAttention",
    ),
    "MLA passes k_channels/v_channels, which TE's attention takes and the local one refuses",
)
ZERO_CENTERED_LOCAL_NORM = Workaround(
    "zero-centered RMSNorm in the local spec",
    MEGATRON,
    VERSIONS,
    (
        "megatron.core.models.backends:LocalSpecProvider.layer_norm",
        "megatron.core.transformer.torch_norm:WrappedTorchNorm",
    ),
    "the local norm refuses layernorm_zero_centered_gamma, which TE's norms implement",
)
LOCAL_SPEC_MODULES_SWAPPED = Workaround(
    "local block spec's modules swapped after building",
    MEGATRON,
    VERSIONS,
    (
        "megatron.core.models.gpt.gpt_layer_specs:get_gpt_layer_local_spec reads LocalSpecProvider",
        "megatron.core.models.gpt.gpt_layer_specs:get_gpt_decoder_block_spec",
    ),
    "the GPT block spec builders take no spec provider: they use megatron's LocalSpecProvider",
)
GATED_DELTA_NET_TORCH_KERNELS = Workaround(
    "Gated DeltaNet on torch kernels",
    MEGATRON,
    VERSIONS,
    (
        f"{_GDN}:torch_chunk_gated_delta_rule",
        f"{_GDN}:GatedDeltaNet.__init__ reads HAVE_FLA",
        f"{_GDN}:GatedDeltaNet.forward reads l2norm",
        f"{_GDN}:GatedDeltaNet.forward reads chunk_gated_delta_rule",
    ),
    "GatedDeltaNet refuses to build without flash-linear-attention, whose kernels need a GPU",
)
GATED_DELTA_NET_MODULE_KERNELS = Workaround(
    "Gated DeltaNet module's kernels replaced process-wide",
    MEGATRON,
    VERSIONS,
    (
        f"{_GDN}:HAVE_FLA",
        f"{_GDN}:chunk_gated_delta_rule",
        f"{_GDN}:GatedDeltaNet.forward reads l2norm",
    ),
    "for code that builds megatron's GatedDeltaNet itself without flash-linear-attention",
)
TORCH_DIST_READER = Workaround(
    "torch_dist checkpoint reader of our own",
    MEGATRON,
    # models/dist_checkpoint.py was checked against both releases' loaders.
    ">=0.16.1,<0.20",
    ("megatron.core.dist_checkpointing.strategies.torch:_get_filesystem_reader",),
    "megatron builds its torch_dist reader in one module-level function, with no way to pass one",
)

WORKAROUNDS = (
    SLIDING_WINDOW_MASK,
    DISPATCHER_NUMPY_ON_HOST,
    ROUTER_GEMM_WITHOUT_TE,
    MLA_WITHOUT_TE,
    LOCAL_CORE_ATTENTION,
    ZERO_CENTERED_LOCAL_NORM,
    LOCAL_SPEC_MODULES_SWAPPED,
    GATED_DELTA_NET_TORCH_KERNELS,
    GATED_DELTA_NET_MODULE_KERNELS,
    TORCH_DIST_READER,
)


def sliding_window_causal_mask(sq: int, skv: int, window_size: tuple[int, int]) -> torch.Tensor:
    # Same mask as megatron.core.transformer.utils.get_sliding_window_causal_mask, on the host.
    m = torch.ones(sq, skv, dtype=torch.bool)
    upper = torch.triu(m, diagonal=skv - sq - window_size[0])
    return ~torch.tril(upper, diagonal=skv - sq + window_size[1])


def apply_cpu_workarounds() -> None:
    """The CPU workarounds above, process-wide (after ``compat.torch``'s)."""
    from megatron.core.transformer.moe import moe_utils

    SLIDING_WINDOW_MASK.patch(
        "megatron.core.fusions.fused_softmax:get_sliding_window_causal_mask", sliding_window_causal_mask
    )
    to_host = moe_utils.maybe_move_tensor_to_cpu

    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        # Megatron converts to numpy only when it copies from CUDA; the alltoall dispatcher
        # needs the numpy form (split sizes) either way.
        out = to_host(tensor, as_numpy=as_numpy, record_stream=record_stream)
        return out.numpy() if as_numpy and torch.is_tensor(out) else out

    DISPATCHER_NUMPY_ON_HOST.patch(
        "megatron.core.transformer.moe.token_dispatcher:maybe_move_tensor_to_cpu", maybe_move_tensor_to_cpu
    )


def apply_local_spec_workarounds(have_transformer_engine: bool) -> None:
    """The workarounds Megatron's local spec needs process-wide (its modules read these names at
    run time); the modules themselves are ``models/local_spec.py``'s."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        ROUTER_GEMM_WITHOUT_TE.patch(ROUTER_GEMM_WITHOUT_TE.symbols[0], None)
    if not have_transformer_engine:
        MLA_WITHOUT_TE.patch("megatron.core.transformer.multi_latent_attention:HAVE_TE", False)


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """flash-linear-attention's l2norm, in torch (as transformers' Qwen3-Next fallback)."""
    return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)


def _with_globals(function: Callable, names: dict[str, Any]) -> Callable:
    """``function``'s own code, reading ``names`` where it reads its module's globals of those
    names: the module stays as it is for everyone else."""
    rebound = types.FunctionType(
        function.__code__,
        {**function.__globals__, **names},
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__qualname__ = function.__qualname__
    rebound.__doc__ = function.__doc__
    return rebound


@functools.cache
def gated_delta_net_on_torch_kernels() -> tuple[Callable, Callable]:
    """``GatedDeltaNet.__init__`` and ``.forward`` as megatron-core wrote them, with the torch
    kernels where they read flash-linear-attention's: the chunked gated delta rule Megatron
    ships for its deterministic mode (the math of transformers' Qwen3-Next fallback) and
    ``l2norm``. ``HAVE_FLA`` is true only for this code, whose kernels it guards."""
    GATED_DELTA_NET_TORCH_KERNELS.require()
    from megatron.core.ssm import gated_delta_net

    kernels = {
        "HAVE_FLA": True,
        "l2norm": l2norm,
        "chunk_gated_delta_rule": gated_delta_net.torch_chunk_gated_delta_rule,
    }
    layer = gated_delta_net.GatedDeltaNet
    return _with_globals(layer.__init__, kernels), _with_globals(layer.forward, kernels)


def install_gated_delta_net_kernels() -> bool:
    """Put the torch kernels into megatron's ``gated_delta_net`` module and set its ``HAVE_FLA``,
    for code that builds megatron's ``GatedDeltaNet`` itself without flash-linear-attention
    (returns whether it did; with fla nothing changes). mcore_adapter's models do not need it:
    they build the layer with ``gated_delta_net_on_torch_kernels``."""
    from megatron.core.ssm import gated_delta_net

    if gated_delta_net.HAVE_FLA:
        return False
    GATED_DELTA_NET_MODULE_KERNELS.patch(f"{_GDN}:GatedDeltaNet.forward reads l2norm", l2norm)
    GATED_DELTA_NET_MODULE_KERNELS.patch(
        f"{_GDN}:chunk_gated_delta_rule", gated_delta_net.torch_chunk_gated_delta_rule
    )
    GATED_DELTA_NET_MODULE_KERNELS.patch(f"{_GDN}:HAVE_FLA", True)
    return True


@contextlib.contextmanager
def torch_dist_reader(reader: Callable) -> Iterator[None]:
    """Megatron's torch_dist strategy building its checkpoint reader with ``reader``, for the
    duration; a megatron-core without the function it builds it in is refused."""
    from megatron.core.dist_checkpointing.strategies import torch as strategy

    symbol = TORCH_DIST_READER.symbols[0]
    name = symbol.split(":")[1]
    original = getattr(strategy, name, None)
    if original is None:
        raise RuntimeError(
            f"this megatron-core has no {strategy.__name__}.{name}, where the torch_dist reader is "
            "built: mcore_adapter cannot load torch_dist checkpoints safely with it"
        )
    TORCH_DIST_READER.patch(symbol, reader)
    try:
        yield
    finally:
        setattr(strategy, name, original)
