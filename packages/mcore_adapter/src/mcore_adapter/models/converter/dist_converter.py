"""Tensor- and pipeline-parallel sharding of canonical Megatron weights, and its inverse.

A canonical weight is the whole tensor under its global Megatron name (what a template's ops
produce, e.g. ``decoder.layers.7.mlp.linear_fc1.weight``). ``DistConverter`` says where it
lives in a layout (which pipeline chunk, under which chunk-local name) and how it splits over
tensor-parallel ranks; ``merge`` undoes ``split`` exactly.

How each weight splits is a declarative table (``TP_RULES``), Megatron-Core's own choices:

- column-parallel (dim 0): fused q/k/v (Megatron's per-group row order, so a plain chunk is
  what each rank's ``ColumnParallelLinear`` holds, also when query groups < tp), and the
  SwiGLU ``linear_fc1``, whose gate and up halves are each chunked and then re-joined per rank;
- row-parallel (dim 1): attention output projection and ``linear_fc2``;
- vocab-parallel (dim 0, padded to Megatron's divisible size): embedding and output layer;
- replicated: norms, the MoE router and its expert bias, the shared expert's gate, and MLA's
  down projections (Transformer Engine's ``duplicated`` linears);
- experts: like the dense MLP, but over the expert-tensor-parallel ranks.

The table fails closed: a weight without a rule is an error, never silently replicated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from .errors import ConversionError
from .layout import DEFAULT_VOCAB_DIVISOR, Chunk, ParallelLayout, RankFile, padded_vocab_size
from .names import MCA_EXPERT_PREFIX, MCA_OUTPUT_LAYER, MTP_LAYER_PREFIX
from .ops import cat
from .shapes import expert_pattern
from .spec import Template

COLUMN, ROW, GATED_COLUMN, VOCAB, REPLICATED = "column", "row", "gated_column", "vocab", "replicated"
# Gated DeltaNet's fused projections: consecutive parts (sizes from the config, see
# ``DistConverter.sections``), each split over the ranks, a rank's slices in part order.
GDN_IN_PROJ, GDN_CONV = "gdn_in_proj", "gdn_conv"

# Layer-relative names start with "."; others are global.
TP_RULES: dict[str, str] = {
    "embedding.word_embeddings.weight": VOCAB,
    MCA_OUTPUT_LAYER: VOCAB,  # a value or reward model's 1-wide head: replicated (see rule)
    "output_layer.bias": REPLICATED,
    "decoder.final_layernorm.weight": REPLICATED,
    ".input_layernorm.weight": REPLICATED,
    ".self_attention.linear_qkv.layer_norm_weight": REPLICATED,
    ".self_attention.linear_qkv.weight": COLUMN,
    ".self_attention.linear_qkv.bias": COLUMN,
    ".self_attention.q_layernorm.weight": REPLICATED,
    ".self_attention.k_layernorm.weight": REPLICATED,
    ".self_attention.linear_proj.weight": ROW,
    ".pre_mlp_layernorm.weight": REPLICATED,
    ".mlp.linear_fc1.layer_norm_weight": REPLICATED,
    ".mlp.linear_fc1.weight": GATED_COLUMN,
    ".mlp.linear_fc1.bias": GATED_COLUMN,
    ".mlp.linear_fc2.weight": ROW,
    # Mixture of experts.
    ".mlp.router.weight": REPLICATED,
    ".mlp.router.expert_bias": REPLICATED,
    ".mlp.shared_experts.linear_fc1.weight": GATED_COLUMN,
    ".mlp.shared_experts.linear_fc2.weight": ROW,
    ".mlp.shared_experts.gate_weight": REPLICATED,
    f"{MCA_EXPERT_PREFIX}linear_fc1.weight": GATED_COLUMN,  # over expert-tensor-parallel ranks
    f"{MCA_EXPERT_PREFIX}linear_fc2.weight": ROW,
    # A multi-token-prediction layer's own tensors (its transformer layer's are above).
    ".enorm.weight": REPLICATED,
    ".hnorm.weight": REPLICATED,
    ".eh_proj.weight": COLUMN,
    ".final_layernorm.weight": REPLICATED,
    # Multi-latent attention.
    ".self_attention.linear_q_proj.weight": COLUMN,
    ".self_attention.linear_q_down_proj.weight": REPLICATED,
    ".self_attention.linear_q_up_proj.layer_norm_weight": REPLICATED,
    ".self_attention.linear_q_up_proj.weight": COLUMN,
    ".self_attention.linear_kv_down_proj.weight": REPLICATED,
    ".self_attention.linear_kv_up_proj.layer_norm_weight": REPLICATED,
    ".self_attention.linear_kv_up_proj.weight": COLUMN,
    # Gated DeltaNet: heads split over TP, the conv channels and per-head parameters with them.
    ".self_attention.in_proj.layer_norm_weight": REPLICATED,
    ".self_attention.in_proj.weight": GDN_IN_PROJ,
    ".self_attention.conv1d.weight": GDN_CONV,
    ".self_attention.A_log": COLUMN,
    ".self_attention.dt_bias": COLUMN,
    ".self_attention.out_norm.weight": REPLICATED,
    ".self_attention.out_proj.weight": ROW,
}
# Subtrees a template carries whole (a vision tower), replicated over tensor-parallel ranks.
REPLICATED_PREFIXES = ("vision_model.",)
EMBEDDING = "embedding.word_embeddings.weight"
# Global weights of the last pipeline stage (with the MTP layers, as Megatron places them);
# every other global weight is on the first.
POST_PROCESS_PREFIXES = ("decoder.final_layernorm.", "output_layer.", MTP_LAYER_PREFIX)


# A canonical expert weight: its layer (a decoder layer or an MTP layer's transformer layer),
# global expert index, the rest of the name. A rank file names its experts the same way with
# local indices (SequentialMLP), or puts the local index after the parameter name (grouped GEMM).
_LAYER = r"(decoder\.layers\.\d+|mtp\.layers\.\d+\.transformer_layer)"
_EXPERT = re.compile(rf"^{_LAYER}\.mlp\.experts\.local_experts\.(\d+)\.(.+)$")
_GROUPED_EXPERT = re.compile(rf"^{_LAYER}\.mlp\.experts\.(linear_fc[12]\.(?:weight|bias))(\d+)$")


class DistConverter:
    """Sharding of one model's canonical weights for one layout."""

    def __init__(
        self,
        mca_kwargs: Mapping[str, Any],
        layout: ParallelLayout,
        rule_overrides: Mapping[str, str] | None = None,
    ):
        """``rule_overrides`` (layer-relative name -> rule) describe a built model whose modules
        split a weight otherwise than Transformer Engine's, the layout of the ``torch`` format."""
        self.layout = layout.validate(mca_kwargs)
        self.ranks = self.layout.ranks()
        self.rule_overrides = dict(rule_overrides or {})
        self.num_experts = int(mca_kwargs.get("num_moe_experts") or 0)
        self.experts_per_rank = self.num_experts // self.layout.ep if self.num_experts else 0
        # Megatron's two expert modules name their weights differently; the config picks one.
        self.grouped_gemm = bool(mca_kwargs.get("moe_grouped_gemm"))
        self.mtp = bool(mca_kwargs.get("mtp_num_layers"))
        self.output_head = mca_kwargs.get("output_head")
        self.gated = bool(mca_kwargs.get("swiglu") or mca_kwargs.get("gated_linear_unit"))
        self.tied = bool(mca_kwargs.get("tie_embeddings_and_output_weights"))
        self.vocab_size = int(mca_kwargs.get("vocab_size") or mca_kwargs["padded_vocab_size"])
        divisor = int(mca_kwargs.get("make_vocab_size_divisible_by") or DEFAULT_VOCAB_DIVISOR)
        given = mca_kwargs.get("padded_vocab_size")
        if given and given >= self.vocab_size and given % self.layout.tp == 0:
            self.padded_vocab_size = int(given)  # a model's own padding (e.g. from a torch_dist checkpoint)
        else:
            self.padded_vocab_size = padded_vocab_size(self.vocab_size, self.layout.tp, divisor)
        self.first = self.layout.chunks[0]
        self.last = self.layout.chunks[-1]
        self.sections = _gdn_sections(mca_kwargs)

    # ------------------------------------------------------------------ placement
    def placements(self, name: str) -> list[tuple[Chunk, str]]:
        """Every (chunk, chunk-local name) that holds the canonical weight ``name``.

        With tied embeddings and more than one pipeline stage the last stage keeps its own copy
        of the embedding as ``output_layer.weight``, as Megatron does.
        """
        layer, rest = Template.split_mca_name(name)
        if layer is not None:
            chunk, local = self.layout.locate(layer)
            prefix = f"decoder.layers.{local}"
        elif name.startswith(POST_PROCESS_PREFIXES):
            chunk, prefix = self.last, None
        else:
            out = [(self.first, name)]
            if name == EMBEDDING and self.last.pp_rank != self.first.pp_rank:
                if self.tied:
                    out.append((self.last, MCA_OUTPUT_LAYER))
                if self.mtp:  # Megatron's MTP stage keeps its own copy of the embedding
                    out.append((self.last, EMBEDDING))
            return out
        expert = _EXPERT.match(name)
        if expert:
            index = int(expert.group(2)) % self.experts_per_rank
            return [(chunk, self.local_expert_name(prefix or expert.group(1), index, expert.group(3)))]
        return [(chunk, name if prefix is None else f"{prefix}{rest}")]

    # ------------------------------------------------------------------ experts
    def expert_owner(self, name: str) -> int | None:
        """The expert-parallel rank holding a canonical expert weight (``None``: not an expert)."""
        expert = _EXPERT.match(name)
        return None if expert is None else int(expert.group(2)) // self.experts_per_rank

    def local_expert_name(self, layer: str, index: int, rest: str) -> str:
        """A rank file's name of local expert ``index`` of a layer (``decoder.layers.{i}`` with
        the chunk-local ``i``, or an MTP layer's transformer layer)."""
        if self.grouped_gemm:
            return f"{layer}.mlp.experts.{rest}{index}"
        return f"{layer}.mlp.experts.local_experts.{index}.{rest}"

    def shards(self, name: str, tensor: torch.Tensor) -> list[tuple[RankFile, Chunk, str, torch.Tensor]]:
        """Every (rank file, chunk, chunk-local name, slice) of a canonical weight."""
        parts = self.split(name, tensor)
        owner = self.expert_owner(name)
        out = []
        for chunk, local in self.placements(name):
            for rank in self.ranks:
                if rank.pp != chunk.pp_rank or (owner is not None and rank.ep != owner):
                    continue
                out.append((rank, chunk, local, parts[rank.tp if owner is None else rank.etp]))
        return out

    def canonical_name(self, chunk: Chunk, local_name: str, ep_rank: int = 0) -> str | None:
        """The canonical name of a chunk-local weight (an expert's of ``ep_rank``); ``None`` for
        the last stage's copy of tied embeddings (the first stage's embedding is the weight)."""
        for pattern, index_group, rest_group in ((_EXPERT, 2, 3), (_GROUPED_EXPERT, 3, 2)):
            match = pattern.match(local_name)
            if match:
                index = int(match.group(index_group))
                if not self.experts_per_rank or index >= self.experts_per_rank:
                    raise ConversionError(
                        f"{local_name!r}: expert {index} of an expert-parallel rank; with "
                        f"{self.num_experts} experts over ep={self.layout.ep} each rank holds "
                        f"{self.experts_per_rank}"
                    )
                global_index = ep_rank * self.experts_per_rank + index
                expert_name = f"{match.group(1)}.mlp.experts.local_experts.{global_index}"
                local_name = f"{expert_name}.{match.group(rest_group)}"
                break
        layer, rest = Template.split_mca_name(local_name)
        if layer is not None:
            if layer >= len(chunk.layers):
                raise ConversionError(
                    f"{local_name!r}: pipeline chunk {chunk.pp_rank}/{chunk.vp_stage} has "
                    f"{len(chunk.layers)} layers in this layout"
                )
            return Template.join_mca_name(chunk.layers[layer], rest)
        if local_name == MCA_OUTPUT_LAYER and self.tied:
            return None
        if local_name == EMBEDDING and not chunk.pre_process:  # the MTP stage's copy
            return None
        return local_name

    # ------------------------------------------------------------------ tensor parallelism
    def rule(self, name: str) -> str:
        rest = Template.layer_relative(name) or name
        pattern = expert_pattern(rest)[0]
        rule = self.rule_overrides.get(pattern) or TP_RULES.get(pattern)
        if name == MCA_OUTPUT_LAYER and self.output_head:
            rule = REPLICATED
        if rule is None:
            if name.startswith(REPLICATED_PREFIXES):
                return REPLICATED
            raise ConversionError(
                f"{name}: no tensor-parallel rule for {rest!r}; add one to "
                "mcore_adapter.models.converter.dist_converter.TP_RULES"
            )
        if rule == GATED_COLUMN and not self.gated:
            return COLUMN
        return rule

    def parallel_size(self, name: str) -> int:
        """How many slices a weight has: tp, or etp for an expert's."""
        return self.layout.expert_tp if _EXPERT.match(name) else self.layout.tp

    def split(self, name: str, tensor: torch.Tensor) -> list[torch.Tensor]:
        """The slices of a canonical weight, one per tensor-parallel rank (expert-tensor-parallel
        rank for an expert's weight), as views."""
        tp = self.parallel_size(name)
        rule = self.rule(name)
        if rule == REPLICATED or (tp == 1 and rule != VOCAB):
            return [tensor] * tp
        if rule == VOCAB:
            tensor = self._pad_vocab(name, tensor)
        dim = 1 if rule == ROW else 0
        if tensor.shape[dim] % tp:
            raise ConversionError(
                f"{name}: dim {dim} of shape {tuple(tensor.shape)} does not split over tp={tp}"
            )
        if rule == GATED_COLUMN:
            gate, up = torch.chunk(tensor, 2, dim=0)
            return [cat(pair, dim=0) for pair in zip(gate.chunk(tp), up.chunk(tp), strict=True)]
        if rule in self.sections:
            parts = [p.chunk(tp) for p in torch.split(tensor, self.sections[rule], dim=0)]
            return [cat([p[r] for p in parts], dim=0) for r in range(tp)]
        return list(torch.chunk(tensor, tp, dim=dim))

    def merge(self, name: str, parts: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of ``split``: the canonical weight from its slices."""
        tp = self.parallel_size(name)
        if len(parts) != tp:
            raise ConversionError(f"{name}: expected {tp} tensor-parallel slices, got {len(parts)}")
        rule = self.rule(name)
        if rule == REPLICATED:
            return parts[0]
        if rule == GATED_COLUMN:
            if tp == 1:  # [gate; up] is already the canonical order: no copy
                return parts[0]
            halves = [p.chunk(2, dim=0) for p in parts]
            return cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
        if rule in self.sections and tp > 1:
            local = [size // tp for size in self.sections[rule]]
            pieces = [torch.split(p, local, dim=0) for p in parts]
            return cat([piece[i] for i in range(len(local)) for piece in pieces], dim=0)
        merged = parts[0] if tp == 1 else cat(parts, dim=1 if rule == ROW else 0)
        if rule == VOCAB:
            merged = merged[: self.vocab_size]
        return merged

    def _pad_vocab(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        rows = tensor.shape[0]
        if rows == self.padded_vocab_size:
            return tensor
        if rows != self.vocab_size:
            raise ConversionError(
                f"{name} has {rows} rows; the config's vocab_size is {self.vocab_size} "
                f"(padded: {self.padded_vocab_size})"
            )
        padded = tensor.new_zeros((self.padded_vocab_size, *tensor.shape[1:]))
        padded[:rows] = tensor
        return padded


def _gdn_sections(mca_kwargs: Mapping[str, Any]) -> dict[str, list[int]]:
    """The parts of Gated DeltaNet's ``in_proj`` (q, k, v, z, b, a) and ``conv1d`` (q, k, v)
    rows, as Megatron's ``GatedDeltaNet`` splits them per rank."""
    if mca_kwargs.get("experimental_attention_variant") != "gated_delta_net":
        return {}
    qk = int(mca_kwargs["linear_key_head_dim"]) * int(mca_kwargs["linear_num_key_heads"])
    heads = int(mca_kwargs["linear_num_value_heads"])
    v = int(mca_kwargs["linear_value_head_dim"]) * heads
    return {GDN_IN_PROJ: [qk, qk, v, v, heads, heads], GDN_CONV: [qk, qk, v]}
