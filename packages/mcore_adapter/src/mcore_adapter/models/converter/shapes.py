"""The shape every weight must have, from the config alone: checked in each conversion's dry
run, so a transposed projection or a norm of the wrong length is reported (all of them at
once) before anything is written, instead of failing when a model loads the result.

Megatron shapes are a declarative table (``MCA_SHAPES``) of dimension names: a Megatron config
field (``hidden_size``) or one of the derived dimensions below. The HF shapes are not written a
second time: they are what a template's own ops give back from the Megatron shapes (the ops are
exact inverses), so every template's HF names are checked without a table of their own. Names
under a wildcard op (a subtree carried whole, like a vision tower) have no shape here; the
model that loads them checks them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .errors import ConversionError
from .names import MCA_EXPERT_PREFIX, MCA_OUTPUT_LAYER, layer_kinds
from .ops import DropConverOp, name_pattern
from .spec import Template

Shape = tuple[int, ...]


def _heads(c: Mapping[str, Any]) -> int:
    return int(c["num_attention_heads"])


def _head_dim(c: Mapping[str, Any]) -> int:
    if c.get("multi_latent_attention"):
        return int(c["v_head_dim"])  # the width per head of what reaches linear_proj
    return int(c.get("kv_channels") or c["hidden_size"] // _heads(c))


def _groups(c: Mapping[str, Any]) -> int:
    return int(c.get("num_query_groups") or _heads(c))


def _ffn(c: Mapping[str, Any]) -> int:
    return int(c.get("ffn_hidden_size") or 4 * c["hidden_size"])  # Megatron's default


def _gated(c: Mapping[str, Any]) -> bool:
    return bool(c.get("swiglu") or c.get("gated_linear_unit"))


def _moe_ffn(c: Mapping[str, Any]) -> int:
    return int(c.get("moe_ffn_hidden_size") or _ffn(c))  # Megatron's default


def _mla_q_head(c: Mapping[str, Any]) -> int:
    return int(c["qk_head_dim"]) + int(c["qk_pos_emb_head_dim"])


def _gdn_qk(c: Mapping[str, Any]) -> int:
    return int(c["linear_key_head_dim"]) * int(c["linear_num_key_heads"])


def _gdn_v(c: Mapping[str, Any]) -> int:
    return int(c["linear_value_head_dim"]) * int(c["linear_num_value_heads"])


# Dimensions computed from several fields, as Megatron-Core computes them.
DERIVED_DIMS: dict[str, Callable[[Mapping[str, Any]], int]] = {
    "head_dim": _head_dim,
    "attention_rows": lambda c: _heads(c) * _head_dim(c),
    # a gated attention's linear_qkv also holds one output gate per query head
    "qkv_rows": lambda c: (
        ((2 if c.get("attention_output_gate") else 1) * _heads(c) + 2 * _groups(c)) * _head_dim(c)
    ),
    "fc1_rows": lambda c: _ffn(c) * (2 if _gated(c) else 1),
    "ffn": _ffn,
    "vocab": lambda c: int(c.get("vocab_size") or c["padded_vocab_size"]),
    "experts": lambda c: int(c["num_moe_experts"]),
    "output_rows": lambda c: (
        1 if c.get("output_head") else int(c.get("vocab_size") or c["padded_vocab_size"])
    ),
    "two_hidden": lambda c: 2 * int(c["hidden_size"]),
    "moe_ffn": _moe_ffn,
    "moe_fc1_rows": lambda c: _moe_ffn(c) * (2 if _gated(c) else 1),
    "shared_ffn": lambda c: int(c["moe_shared_expert_intermediate_size"]),
    "shared_fc1_rows": lambda c: int(c["moe_shared_expert_intermediate_size"]) * (2 if _gated(c) else 1),
    "mla_q_rows": lambda c: _heads(c) * _mla_q_head(c),
    "mla_kv_down_rows": lambda c: int(c["kv_lora_rank"]) + int(c["qk_pos_emb_head_dim"]),
    "mla_kv_up_rows": lambda c: _heads(c) * (int(c["qk_head_dim"]) + int(c["v_head_dim"])),
    # Gated DeltaNet
    "gdn_in_rows": lambda c: 2 * _gdn_qk(c) + 2 * _gdn_v(c) + 2 * int(c["linear_num_value_heads"]),
    "gdn_conv_rows": lambda c: 2 * _gdn_qk(c) + _gdn_v(c),
    "gdn_v_dim": lambda c: _gdn_v(c),
}

# Canonical (whole, unpadded) Megatron weights; layer-relative names start with ".".
MCA_SHAPES: dict[str, tuple[str | int, ...]] = {
    "embedding.word_embeddings.weight": ("vocab", "hidden_size"),
    MCA_OUTPUT_LAYER: ("output_rows", "hidden_size"),
    "output_layer.bias": ("output_rows",),
    "decoder.final_layernorm.weight": ("hidden_size",),
    ".self_attention.linear_qkv.layer_norm_weight": ("hidden_size",),
    ".self_attention.linear_qkv.weight": ("qkv_rows", "hidden_size"),
    ".self_attention.linear_qkv.bias": ("qkv_rows",),
    ".self_attention.q_layernorm.weight": ("head_dim",),
    ".self_attention.k_layernorm.weight": ("head_dim",),
    ".self_attention.linear_proj.weight": ("hidden_size", "attention_rows"),
    ".mlp.linear_fc1.layer_norm_weight": ("hidden_size",),
    ".mlp.linear_fc1.weight": ("fc1_rows", "hidden_size"),
    ".mlp.linear_fc1.bias": ("fc1_rows",),
    ".mlp.linear_fc2.weight": ("hidden_size", "ffn"),
    # Mixture of experts ("{}": the global expert index).
    ".pre_mlp_layernorm.weight": ("hidden_size",),
    ".mlp.router.weight": ("experts", "hidden_size"),
    ".mlp.router.expert_bias": ("experts",),
    f"{MCA_EXPERT_PREFIX}linear_fc1.weight": ("moe_fc1_rows", "hidden_size"),
    f"{MCA_EXPERT_PREFIX}linear_fc2.weight": ("hidden_size", "moe_ffn"),
    ".mlp.shared_experts.linear_fc1.weight": ("shared_fc1_rows", "hidden_size"),
    ".mlp.shared_experts.linear_fc2.weight": ("hidden_size", "shared_ffn"),
    ".mlp.shared_experts.gate_weight": (1, "hidden_size"),
    # A multi-token-prediction layer's own tensors (beside its transformer layer's).
    ".enorm.weight": ("hidden_size",),
    ".hnorm.weight": ("hidden_size",),
    ".eh_proj.weight": ("hidden_size", "two_hidden"),
    ".final_layernorm.weight": ("hidden_size",),
    # Multi-latent attention.
    ".input_layernorm.weight": ("hidden_size",),
    ".self_attention.linear_q_proj.weight": ("mla_q_rows", "hidden_size"),
    ".self_attention.linear_q_down_proj.weight": ("q_lora_rank", "hidden_size"),
    ".self_attention.linear_q_up_proj.layer_norm_weight": ("q_lora_rank",),
    ".self_attention.linear_q_up_proj.weight": ("mla_q_rows", "q_lora_rank"),
    ".self_attention.linear_kv_down_proj.weight": ("mla_kv_down_rows", "hidden_size"),
    ".self_attention.linear_kv_up_proj.layer_norm_weight": ("kv_lora_rank",),
    ".self_attention.linear_kv_up_proj.weight": ("mla_kv_up_rows", "kv_lora_rank"),
    # Gated DeltaNet.
    ".self_attention.in_proj.layer_norm_weight": ("hidden_size",),
    ".self_attention.in_proj.weight": ("gdn_in_rows", "hidden_size"),
    ".self_attention.conv1d.weight": ("gdn_conv_rows", 1, "linear_conv_kernel_dim"),
    ".self_attention.A_log": ("linear_num_value_heads",),
    ".self_attention.dt_bias": ("linear_num_value_heads",),
    ".self_attention.out_norm.weight": ("linear_value_head_dim",),
    ".self_attention.out_proj.weight": ("hidden_size", "gdn_v_dim"),
}


def expert_pattern(local_name: str) -> tuple[str, int | None]:
    """A layer-relative Megatron name with its expert index replaced by ``{}``, and the index
    (``None`` for a name outside the experts)."""
    match = _EXPERT_RE.match(local_name)
    if not match:
        return local_name, None
    return f"{MCA_EXPERT_PREFIX}{match.group(2)}", int(match.group(1))


_EXPERT_RE = re.compile(r"^" + re.escape(MCA_EXPERT_PREFIX).replace(r"\{\}", r"(\d+)") + r"(.+)$")


def _dim(spec: str | int, config: Mapping[str, Any]) -> int:
    """One dimension the config implies; a field it needs but lacks is the config's fault."""
    if isinstance(spec, int):
        return spec
    try:
        return DERIVED_DIMS[spec](config) if spec in DERIVED_DIMS else int(config[spec])
    except KeyError as e:
        raise ConversionError(
            f"the config lacks {e.args[0]}, which the tensors' shapes follow from; a "
            f"{config.get('hf_model_type', 'model')} config states it"
        ) from None


def describe(shape: Shape, found: Shape) -> str:
    hint = " (transposed?)" if len(shape) == 2 and tuple(reversed(shape)) == found else ""
    return f"expected {tuple(shape)}, found {tuple(found)}{hint}"


class ShapeCheck:
    """Expected shapes of one model's canonical Megatron weights and of its HF tensors."""

    def __init__(self, template: Template, mca_kwargs: Mapping[str, Any]):
        self.template = template
        self.config = mca_kwargs
        op_config = template.op_config(mca_kwargs)
        self.tied = op_config.tie_embeddings_and_output_weights
        # The HF shapes, by the HF names the inverse ops give the Megatron shapes (an expert's
        # names under the expert index 0, then matched by pattern); per layer kind.
        self._hf: dict[tuple[str | None, str], Shape] = {}
        for op in template.active_ops(op_config):
            if isinstance(op, DropConverOp) or not op.mca_names:
                continue
            names = [n.format(0) if n.startswith(MCA_EXPERT_PREFIX) else n for n in op.mca_names]
            shapes = [self.mca_local_shape(n) for n in names]
            if any(s is None for s in shapes):
                continue
            op.bind(op_config)
            metas = [torch.empty(s, device="meta") for s in shapes]
            for name, tensor in zip(op.hf_names, op.convert(metas, to_mca=False), strict=True):
                self._hf[op.layers, name] = tuple(tensor.shape)
        self._hf_patterns = [
            (kind, name_pattern(name), shape) for (kind, name), shape in self._hf.items() if "{}" in name
        ]
        self._kinds = layer_kinds(op_config)

    def mca_local_shape(self, local_name: str) -> Shape | None:
        """The shape of a Megatron weight by its layer-relative (or global) name."""
        spec = MCA_SHAPES.get(expert_pattern(local_name)[0])
        return None if spec is None else tuple(_dim(s, self.config) for s in spec)

    def mca_shape(self, name: str) -> Shape | None:
        """The canonical shape of a Megatron weight by its global name."""
        local = Template.layer_relative(name)
        return self.mca_local_shape(local if local is not None else name)

    def hf_shape(self, name: str) -> Shape | None:
        layer, local = self.template.split_hf_name(name)
        if layer is None:
            return self._hf.get((None, local))
        if layer >= len(self._kinds):  # a multi-token-prediction layer: built like the last layer
            repeated = self.template.mtp_shared_copies.get(local)
            if repeated is not None:
                return self._hf.get((None, repeated))
            keys = [("mtp", local), (self._kinds[-1] if self._kinds else None, local), (None, local)]
            kind = self._kinds[-1] if self._kinds else None
        else:
            kind = self._kinds[layer]
            keys = [(kind, local), (None, local)]
        for key in keys:
            if key in self._hf:
                return self._hf[key]
        for op_kind, pattern, shape in self._hf_patterns:
            if op_kind in (None, kind) and pattern.match(local):
                return shape
        return None

    def unknown_mca_names(self) -> list[str]:
        """Megatron names of the template's ops that have no shape rule (wildcards excepted)."""
        return sorted(
            name
            for op in self.template.weight_converters
            if not isinstance(op, DropConverOp)
            for name in op.mca_names
            if name not in MCA_SHAPES and ("{}" not in name or name.startswith(MCA_EXPERT_PREFIX))
        )


class Problems:
    """Everything wrong with a checkpoint, collected during a dry run and reported at once."""

    MAX_SHOWN = 25

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def __bool__(self) -> bool:
        return bool(self.items)

    def message(self, what: str, hint: str) -> str:
        shown = self.items[: self.MAX_SHOWN]
        more = len(self.items) - len(shown)
        lines = [f"{what}: {len(self.items)} problem(s); {hint}", *(f"  {p}" for p in shown)]
        if more:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)
