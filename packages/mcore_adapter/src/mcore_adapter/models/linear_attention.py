"""Building blocks of the hybrid families (Qwen3-Next, Qwen3.5): Gated DeltaNet layers
(Megatron's ``experimental_attention_variant="gated_delta_net"``) between gated full-attention
layers, with zero-centered RMSNorms (``layernorm_zero_centered_gamma``).

Megatron's layouts, which the ops below produce:
- ``in_proj [q; k; v; z; b; a]``: all heads of each part in turn (``q``/``k`` over key heads,
  ``v``/``z`` over value heads, one ``b``/``a`` row per value head). A tensor-parallel rank
  holds its heads of every part in the same order (see ``dist_converter``). Qwen3-Next's
  ``in_proj_qkvz`` / ``in_proj_ba`` group the parts per key head instead.
- ``conv1d [q; k; v]`` channels (the HF order already).
- ``linear_qkv`` of gated attention, per query group: the group's query heads, their output
  gates, then its key and value. HF's ``q_proj`` interleaves each head's query and gate.
- ``out_norm`` of Gated DeltaNet scales by ``1 + w`` like every norm of the layer (zero-centered),
  where HF's ``RMSNormGated`` scales by ``w``: Megatron stores ``w - 1``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .converter.ops import ConverOp, QKVConverOp, RenameConverOp, cat
from .converter.template import DerivedField

# The Gated DeltaNet sizes, named alike on both sides.
LINEAR_ATTENTION_HF_TO_MCA: dict[str, str] = {
    name: name
    for name in (
        "linear_conv_kernel_dim",
        "linear_key_head_dim",
        "linear_value_head_dim",
        "linear_num_key_heads",
        "linear_num_value_heads",
    )
}

LINEAR_ATTENTION_CONSTANTS: dict[str, Any] = {
    "experimental_attention_variant": "gated_delta_net",
    "layernorm_zero_centered_gamma": True,
    "attention_output_gate": True,
}


def _layer_types_to_freq(layer_types: list[str] | None) -> list[int] | None:
    if layer_types is None:
        return None
    unknown = sorted(set(layer_types) - {"linear_attention", "full_attention"})
    if unknown:
        from .converter.errors import ConversionError

        raise ConversionError(
            f"layer_types holds {unknown}; Megatron-Core builds linear and full attention only"
        )
    return [int(kind == "linear_attention") for kind in layer_types]


# HF's per-layer ``layer_types`` as Megatron's ``linear_attention_freq`` list (1: Gated DeltaNet).
LINEAR_ATTENTION_FREQ = DerivedField(
    ("layer_types",),
    _layer_types_to_freq,
    lambda freq, mca: {
        "layer_types": [
            "linear_attention" if f else "full_attention"
            for f in (
                freq
                if isinstance(freq, list)
                else [int((i + 1) % freq != 0) for i in range(mca["num_layers"])]
            )
        ]
    },
)


class GatedDeltaNetInProjConverOp(ConverOp):
    """Qwen3-Next's ``in_proj_qkvz`` (per key head: q, k, the head's v's, the head's z's) and
    ``in_proj_ba`` (per key head: the head's b's, the head's a's) <-> Megatron's ``in_proj``."""

    hf_arity = 2
    mca_arity = 1

    def _dims(self) -> tuple[int, int, int, int]:
        nk, nv, dk, dv = self._need(
            "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim"
        )
        return nk, nv // nk, dk, dv

    def _hf_to_mca(self, tensors):
        nk, per, dk, dv = self._dims()
        qkvz, ba = tensors
        tail = qkvz.shape[1:]
        rows = (nk * (2 * dk + 2 * per * dv), nk * 2 * per)
        for name, t, expected in zip(self.hf_names, tensors, rows, strict=True):
            if t.shape[0] != expected:
                raise ValueError(
                    f"{name}: expected {expected} rows (from the linear_* sizes), got {tuple(t.shape)}"
                )
        q, k, v, z = torch.split(qkvz.reshape(nk, -1, *tail), [dk, dk, per * dv, per * dv], dim=1)
        b, a = torch.split(ba.reshape(nk, -1, *tail), [per, per], dim=1)
        return cat([t.reshape(-1, *tail) for t in (q, k, v, z, b, a)], dim=0)

    def _mca_to_hf(self, tensors):
        nk, per, dk, dv = self._dims()
        (fused,) = tensors
        tail = fused.shape[1:]
        sizes = [nk * dk, nk * dk, nk * per * dv, nk * per * dv, nk * per, nk * per]
        q, k, v, z, b, a = (t.reshape(nk, -1, *tail) for t in torch.split(fused, sizes, dim=0))
        return [cat([q, k, v, z], dim=1).reshape(-1, *tail), cat([b, a], dim=1).reshape(-1, *tail)]


class OffsetConverOp(ConverOp):
    """One tensor, stored in Megatron as the HF value plus ``offset`` (a norm whose Megatron
    module scales by ``1 + w`` where HF's scales by ``w``: offset -1). Exact for the values
    norms have, within a factor of 2 of 1 (Sterbenz: ``w - 1`` is representable)."""

    hf_arity = 1
    mca_arity = 1

    def __init__(self, hf_names, mca_names, offset: float):
        self.offset = offset
        super().__init__(hf_names, mca_names)

    def _hf_to_mca(self, tensors):
        (hf,) = tensors
        out = hf + self.offset
        if hf.device.type != "meta" and not torch.equal(out - self.offset, hf):
            lossy = int((out - self.offset != hf).sum())
            warnings.warn(
                f"{self.hf_names[0]}: {lossy} value(s) outside [0.5, 2] do not convert exactly "
                f"(w {self.offset:+g} rounds; back they differ by about 1e-7): not exact",
                stacklevel=2,
            )
        return out

    def _mca_to_hf(self, tensors):
        return tensors[0] - self.offset


class GatedQKVConverOp(QKVConverOp):
    """Gated attention: HF's ``q_proj`` (per head: the query, then its output gate), ``k_proj``,
    ``v_proj`` <-> Megatron's ``linear_qkv`` (per query group: its query heads, their gates,
    its key, its value)."""

    def _hf_to_mca(self, tensors):
        nh, ng, d = self._dims()
        qg, k, v = tensors
        tail = qg.shape[1:]
        if qg.shape[0] != 2 * nh * d or k.shape[0] != ng * d or v.shape[0] != ng * d:
            raise ValueError(
                f"{self.hf_names}: expected {2 * nh * d}, {ng * d}, {ng * d} rows (query and gate per "
                f"head, key, value), got {tuple(qg.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        per_head = qg.reshape(ng, nh // ng, 2, d, *tail)
        q, gate = per_head[:, :, 0], per_head[:, :, 1]
        parts = [
            q.reshape(ng, -1, *tail),
            gate.reshape(ng, -1, *tail),
            k.reshape(ng, d, *tail),
            v.reshape(ng, d, *tail),
        ]
        return cat(parts, dim=1).reshape(-1, *tail)

    def _mca_to_hf(self, tensors):
        nh, ng, d = self._dims()
        (qkv,) = tensors
        tail = qkv.shape[1:]
        per = nh // ng
        q, gate, k, v = torch.split(
            qkv.reshape(ng, (2 * per + 2) * d, *tail), [per * d, per * d, d, d], dim=1
        )
        qg = torch.stack([q.reshape(ng, per, d, *tail), gate.reshape(ng, per, d, *tail)], dim=2)
        return [qg.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)]


def gated_attention_ops() -> list[ConverOp]:
    """The full-attention layers: gated q, q/k norms, and the input norm fused into
    ``linear_qkv`` (TE names)."""
    ops: list[ConverOp] = [
        RenameConverOp(".input_layernorm.weight", ".self_attention.linear_qkv.layer_norm_weight"),
        GatedQKVConverOp(
            [".self_attn.q_proj.weight", ".self_attn.k_proj.weight", ".self_attn.v_proj.weight"],
            ".self_attention.linear_qkv.weight",
        ),
        RenameConverOp(".self_attn.o_proj.weight", ".self_attention.linear_proj.weight"),
        RenameConverOp(".self_attn.q_norm.weight", ".self_attention.q_layernorm.weight"),
        RenameConverOp(".self_attn.k_norm.weight", ".self_attention.k_layernorm.weight"),
    ]
    return [op.only(attention="full") for op in ops]


def gated_delta_net_ops(in_proj: list[ConverOp]) -> list[ConverOp]:
    """The Gated DeltaNet layers, HF ``linear_attn``; ``in_proj``: the family's ops producing
    Megatron's ``.self_attention.in_proj.weight``."""
    ops: list[ConverOp] = [
        RenameConverOp(".input_layernorm.weight", ".self_attention.in_proj.layer_norm_weight"),
        *in_proj,
        RenameConverOp(".linear_attn.conv1d.weight", ".self_attention.conv1d.weight"),
        RenameConverOp(".linear_attn.A_log", ".self_attention.A_log"),
        RenameConverOp(".linear_attn.dt_bias", ".self_attention.dt_bias"),
        OffsetConverOp(".linear_attn.norm.weight", ".self_attention.out_norm.weight", offset=-1.0),
        RenameConverOp(".linear_attn.out_proj.weight", ".self_attention.out_proj.weight"),
    ]
    return [op.only(attention="linear") for op in ops]


class SplitInProjConverOp(ConverOp):
    """Qwen3.5's ``in_proj_qkv`` ([q; k; v], all heads in turn), ``in_proj_z``, ``in_proj_b``,
    ``in_proj_a`` <-> Megatron's ``in_proj`` (their concatenation)."""

    hf_arity = 4
    mca_arity = 1

    def _sizes(self) -> list[int]:
        nk, nv, dk, dv = self._need(
            "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim"
        )
        return [2 * nk * dk + nv * dv, nv * dv, nv, nv]

    def _hf_to_mca(self, tensors):
        for name, t, rows in zip(self.hf_names, tensors, self._sizes(), strict=True):
            if t.shape[0] != rows:
                raise ValueError(
                    f"{name}: expected {rows} rows (from the linear_* sizes), got {tuple(t.shape)}"
                )
        return cat(tensors, dim=0)

    def _mca_to_hf(self, tensors):
        return list(torch.split(tensors[0], self._sizes(), dim=0))


def qwen3_5_in_proj() -> list[ConverOp]:
    names = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")
    return [
        SplitInProjConverOp([f".linear_attn.{n}.weight" for n in names], ".self_attention.in_proj.weight")
    ]


def qwen3_next_in_proj() -> list[ConverOp]:
    return [
        GatedDeltaNetInProjConverOp(
            [".linear_attn.in_proj_qkvz.weight", ".linear_attn.in_proj_ba.weight"],
            ".self_attention.in_proj.weight",
        )
    ]
