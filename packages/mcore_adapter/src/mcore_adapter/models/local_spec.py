"""Megatron's local (non Transformer Engine) layer spec, with the modules our families need that
megatron-core 0.16's local modules lack; megatron's own classes are left as they are.

- ``LocalSpecProvider``: megatron's, with a norm that also does zero-centered RMSNorm (Qwen3-Next,
  Qwen3.5) and a core attention that takes the per-head widths multi-latent attention passes.
- Megatron's GPT block spec builders take no provider: ``decoder_block_spec`` builds megatron's
  local spec and swaps its modules for the provider's (``with_modules_swapped``).
- Gated DeltaNet layers (Megatron's hybrid spec is Transformer Engine only): megatron's
  ``GatedDeltaNet`` with local linears and norm, on torch kernels where flash-linear-attention
  is missing (``TorchGatedDeltaNet``).

Each departure is declared, with the releases it was checked against, in ``compat.megatron``.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from typing import Any

import torch
from megatron.core.models import backends
from megatron.core.models.gpt.experimental_attention_variant_module_specs import get_linear_attention_pattern
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_decoder_block_spec,
    get_gpt_mtp_block_spec_for_backend,
)
from megatron.core.ssm import gated_delta_net
from megatron.core.ssm.gated_delta_net import GatedDeltaNet, GatedDeltaNetSubmodules
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from ..compat import megatron as megatron_compat
from .model_config import McaModelConfig


class LocalCoreAttention(DotProductAttention):
    """The local core attention, accepting the per-head q/k and v widths that MLA passes
    (TE's attention takes them); the widths follow from the tensors themselves here."""

    def __init__(self, *args, k_channels=None, v_channels=None, **kwargs):
        super().__init__(*args, **kwargs)


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


class LocalNorm(WrappedTorchNorm):
    """Megatron's local norm (a factory of torch's norms), and ``ZeroCenteredRMSNorm`` for a
    zero-centered RMSNorm, which megatron's refuses."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, *args, **kwargs):
        if config.layernorm_zero_centered_gamma and config.normalization == "RMSNorm":
            return ZeroCenteredRMSNorm(hidden_size, eps)
        return super().__new__(cls, config, hidden_size, eps, *args, **kwargs)


class LocalSpecProvider(backends.LocalSpecProvider):
    """Megatron's local modules, with ``LocalNorm`` for its norm and ``LocalCoreAttention``."""

    SWAPS: dict[type, type] = {WrappedTorchNorm: LocalNorm, DotProductAttention: LocalCoreAttention}

    def __init__(self) -> None:
        megatron_compat.LOCAL_CORE_ATTENTION.require()
        megatron_compat.ZERO_CENTERED_LOCAL_NORM.require()

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        module = super().layer_norm(rms_norm=rms_norm, for_qk=for_qk)
        return self.SWAPS.get(module, module)

    def core_attention(self) -> type:
        return LocalCoreAttention


class TorchGatedDeltaNet:
    """Builds megatron's own ``GatedDeltaNet`` (the layer is of megatron's class), running its own
    code with torch kernels in place of flash-linear-attention's (``compat.megatron``)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> GatedDeltaNet:
        init, forward = megatron_compat.gated_delta_net_on_torch_kernels()
        layer = GatedDeltaNet.__new__(GatedDeltaNet)
        init(layer, *args, **kwargs)
        layer.forward = types.MethodType(forward, layer)
        return layer


def gated_delta_net_module() -> type:
    """Megatron's ``GatedDeltaNet`` where its kernels are there, else ``TorchGatedDeltaNet``."""
    return GatedDeltaNet if gated_delta_net.HAVE_FLA else TorchGatedDeltaNet


def with_modules_swapped(spec: Any, swaps: dict[type, type]) -> Any:
    """A copy of ``spec`` (a module spec, submodules, a list of layer specs) with every module
    class in ``swaps`` replaced by its value, at any depth; ``spec`` itself is unchanged."""
    if isinstance(spec, type):
        return swaps.get(spec, spec)
    if isinstance(spec, list):
        return [with_modules_swapped(item, swaps) for item in spec]
    if dataclasses.is_dataclass(spec):
        swapped = copy.copy(spec)
        for field in dataclasses.fields(spec):
            object.__setattr__(swapped, field.name, with_modules_swapped(getattr(spec, field.name), swaps))
        return swapped
    return spec


def decoder_block_spec(config: McaModelConfig, vp_stage: int | None = None):
    """Megatron's local block spec for the layers this chunk builds, with our provider's modules,
    and Gated DeltaNet layers where the config's linear-attention pattern has them."""
    megatron_compat.LOCAL_SPEC_MODULES_SWAPPED.require()
    provider = LocalSpecProvider()
    spec = get_gpt_decoder_block_spec(
        config, use_transformer_engine=False, normalization=config.normalization, vp_stage=vp_stage
    )
    spec = with_modules_swapped(spec, provider.SWAPS)
    if config.experimental_attention_variant == "gated_delta_net":
        _gated_delta_net_layers(config, spec, provider, vp_stage)
    return spec


def _gated_delta_net_layers(config: McaModelConfig, spec, provider: LocalSpecProvider, vp_stage: int | None):
    """The Gated DeltaNet layers with local linears and norm (the input norm stays a separate
    module, which TE fuses into ``in_proj``)."""
    pattern = get_linear_attention_pattern(config)
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
    gdn = ModuleSpec(  # megatron's get_gated_delta_net_module_spec, with an unfused in_proj
        module=gated_delta_net_module(),
        submodules=GatedDeltaNetSubmodules(
            in_proj=provider.column_parallel_linear(),
            out_norm=provider.layer_norm(rms_norm=config.normalization == "RMSNorm", for_qk=False),
            out_proj=provider.row_parallel_linear(),
        ),
    )
    for index, layer in enumerate(spec.layer_specs):  # layers may share one spec object: copy
        if pattern[offset + index]:
            submodules = dataclasses.replace(layer.submodules, self_attention=gdn)
            spec.layer_specs[index] = dataclasses.replace(layer, submodules=submodules)


def with_gated_delta_net_kernels(spec):
    """A spec's Gated DeltaNet layers on torch kernels where flash-linear-attention is missing
    (Megatron's Transformer Engine hybrid spec names ``GatedDeltaNet`` itself)."""
    return with_modules_swapped(spec, {GatedDeltaNet: gated_delta_net_module()})


def mtp_block_spec(config: McaModelConfig, block_spec, vp_stage: int | None = None):
    """Megatron's multi-token-prediction block spec over ``block_spec``, with our provider."""
    return get_gpt_mtp_block_spec_for_backend(
        config, block_spec, backend=LocalSpecProvider(), vp_stage=vp_stage
    )
