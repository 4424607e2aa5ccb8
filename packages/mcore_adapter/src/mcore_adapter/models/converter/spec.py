"""``Template``: everything needed to convert one HF ``model_type`` to and from Megatron-Core,
its tables checked when it is made; the weight-side queries the converter asks of it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from .config_map import DerivedField, TemplateConfig
from .mapper import WeightMapper
from .names import (
    MCA_EXPERT_PREFIX,
    MCA_OUTPUT_LAYER,
    MTP_INNER,
    MTP_LAYER_PREFIX,
    attention_kinds,
    join_mca_name,
    layer_kinds,
    layer_relative,
    split_mca_name,
)
from .ops import WILDCARD, ConverOp, DropConverOp, name_pattern


def _exclusive(a: ConverOp, b: ConverOp) -> bool:
    """Whether two ops can never both convert one tensor: limited to different layer kinds, or
    one needs a config field that the other needs to be unset."""
    if a.layers and b.layers and a.layers != b.layers:
        return True
    if a.attention and b.attention and a.attention != b.attention:
        return True
    return bool(set(a.if_config) & set(b.unless_config) or set(b.if_config) & set(a.unless_config))


@dataclass
class Template(TemplateConfig):
    """Everything needed to convert one HF ``model_type`` to and from Megatron-Core.

    ``config_hf_to_mca`` maps HF config fields (dotted paths into the normalized HF config,
    e.g. ``rope_parameters.rope_theta``) to Megatron config fields. ``hf_config_expect`` lists
    HF config values the template relies on; a config that differs is rejected rather than
    converted into a different model. ``hf_config_defaults`` are transformers' defaults for
    fields hub configs often leave out (a value, ``None`` for "no such field", or a function of
    the config), so such configs convert without importing transformers (tested against
    transformers' own). ``hf_architecture`` is the HF model class an exported ``config.json``
    names when the HF config has to be rebuilt from the Megatron config.
    """

    hf_model_type: str
    config_hf_to_mca: dict[str, str]
    weight_converters: list[ConverOp]
    hf_layer_prefix: str
    constant_mca_config: dict[str, Any] = field(default_factory=dict)
    hf_invalid_keys: list[str] = field(default_factory=list)
    hf_config_expect: dict[str, Any] = field(default_factory=dict)
    hf_config_defaults: dict[str, Any] = field(default_factory=dict)
    hf_architecture: str | None = None
    config_derived: dict[str, DerivedField] = field(default_factory=dict)
    # transformers' fused in-memory expert tensors -> the per-expert names stacked in them (see
    # fused_experts); checkpoints saved from memory carry these names.
    hf_fused_experts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Fused tensors (keys of hf_fused_experts) hub checkpoints may store transposed,
    # [E, columns, n x rows] -> the dotted HF config field the in-memory layout's last dim has
    # (e.g. "text_config.hidden_size" for gate_up_proj); see fused_experts.
    hf_fused_experts_transposed: dict[str, str] = field(default_factory=dict)
    # HF tensors of an MTP layer that repeat a main-model tensor (Megatron's MTP layers share
    # the embedding and output layer): layer-relative HF name -> the global HF name it repeats.
    # Read: checked equal and not stored twice; written: repeated.
    mtp_shared_copies: dict[str, str] = field(default_factory=dict)
    # What a parallel layout must satisfy beyond Megatron's own rules, for this family:
    # rule(mca_kwargs, bound_layout) raises LayoutError. ParallelLayout.validate applies them, so
    # convert, reshard, verify and model building refuse the same layouts.
    layout_rules: tuple[Callable[[Mapping[str, Any], Any], None], ...] = ()

    def __post_init__(self) -> None:
        if not self.hf_layer_prefix.endswith("."):
            raise ValueError(f"hf_layer_prefix must end with '.', got {self.hf_layer_prefix!r}")
        seen: dict[tuple[bool, str], list[ConverOp]] = {}
        for op in self.weight_converters:
            if not isinstance(op, ConverOp):
                raise TypeError(f"weight_converters holds {op!r}, which is not a ConverOp")
            for mca, names in ((False, op.hf_names), (True, op.mca_names)):
                for name in names:
                    for other in seen.get((mca, name), []):
                        if not _exclusive(op, other):
                            raise ValueError(
                                f"template {self.hf_model_type!r}: {name!r} is used by both "
                                f"{other!r} and {op!r}"
                            )
                    seen.setdefault((mca, name), []).append(op)
        duplicated = {
            v for v in self.config_hf_to_mca.values() if list(self.config_hf_to_mca.values()).count(v) > 1
        }
        if duplicated:
            raise ValueError(f"template {self.hf_model_type!r}: Megatron fields mapped twice: {duplicated}")
        for name, path in self.hf_fused_experts_transposed.items():
            parts = self.hf_fused_experts.get(name)
            if parts is None:
                raise ValueError(
                    f"template {self.hf_model_type!r}: hf_fused_experts_transposed names {name!r}, "
                    f"which is not a key of hf_fused_experts ({sorted(self.hf_fused_experts)})"
                )
            if all(WILDCARD not in p for p in parts):
                raise ValueError(
                    f"template {self.hf_model_type!r}: hf_fused_experts_transposed names {name!r}, "
                    "a renamed tensor rather than fused experts"
                )
            if not isinstance(path, str) or not path:
                raise ValueError(
                    f"template {self.hf_model_type!r}: hf_fused_experts_transposed[{name!r}] must be "
                    f"a dotted HF config field such as 'text_config.hidden_size', got {path!r}"
                )
        self._layer_re = re.compile(rf"^{re.escape(self.hf_layer_prefix)}(\d+)(\..+)$")
        self._invalid = [name_pattern(name) for name in self.hf_invalid_keys]

    # ------------------------------------------------------------------ weights
    def fused_experts(self, hf_config: Mapping[str, Any] | None = None):
        """The fused-expert table. With the checkpoint's ``hf_config`` it also tells stored
        transposed tensors (``hf_fused_experts_transposed``) from in-memory ones."""
        from .fused_experts import FusedExperts

        config_value = None if hf_config is None else (lambda path: self.hf_config_value(hf_config, path))
        return FusedExperts(
            self.hf_fused_experts, self.hf_layer_prefix, self.hf_fused_experts_transposed, config_value
        )

    def active_ops(self, config: Any) -> list[ConverOp]:
        """The ops that convert a model with this Megatron config (``None``: every op)."""
        if config is None:
            return list(self.weight_converters)
        tied = bool(getattr(config, "tie_embeddings_and_output_weights", False))
        return [
            op
            for op in self.weight_converters
            if op.applies_to(config) and not (tied and MCA_OUTPUT_LAYER in op.mca_names)
        ]

    def mtp_layers(self, hf_names: Iterable[str], num_layers: int) -> int:
        """How many multi-token-prediction layers an HF checkpoint holds: the layers numbered
        after the config's decoder layers (configs state ``num_nextn_predict_layers`` whether or
        not the weights are there)."""
        layers = {self.split_hf_name(name)[0] for name in hf_names}
        return len({i for i in layers if i is not None and i >= num_layers})

    def embedding_hf_name(self) -> str | None:
        return next(
            (
                op.hf_names[0]
                for op in self.weight_converters
                if "embedding.word_embeddings.weight" in op.mca_names
            ),
            None,
        )

    def tied_hf_names(self) -> list[str]:
        """HF names that only exist for an untied output layer (dropped when embeddings are tied)."""
        return [n for op in self.weight_converters if MCA_OUTPUT_LAYER in op.mca_names for n in op.hf_names]

    def split_hf_name(self, name: str) -> tuple[int | None, str]:
        match = self._layer_re.match(name)
        return (int(match.group(1)), match.group(2)) if match else (None, name)

    def join_hf_name(self, layer: int | None, local: str) -> str:
        return local if layer is None else f"{self.hf_layer_prefix}{layer}{local}"

    split_mca_name = staticmethod(split_mca_name)
    layer_relative = staticmethod(layer_relative)
    join_mca_name = staticmethod(join_mca_name)

    def is_invalid_hf_key(self, local_name: str) -> bool:
        return any(p.match(local_name) for p in self._invalid)

    def expected_mca_names(self, config: Any) -> set[str]:
        """The Megatron names a complete checkpoint of this config produces: every expert of
        every expert layer included, other wildcard ops (a subtree carried whole) excluded."""
        names: set[str] = set()
        kinds = layer_kinds(config)
        attention = attention_kinds(config)
        experts = range(getattr(config, "num_moe_experts", None) or 0)
        mtp = range(getattr(config, "mtp_num_layers", None) or 0)
        for op in self.active_ops(config):
            if isinstance(op, DropConverOp):
                continue
            for name in op.mca_names:
                if not op.is_layer_local:
                    if WILDCARD not in name:
                        names.add(name)
                    continue
                if name.count(WILDCARD) == 1 and name.startswith(MCA_EXPERT_PREFIX):
                    local = [name.format(e) for e in experts]
                elif WILDCARD in name:
                    continue
                else:
                    local = [name]
                if op.layers == "mtp":
                    names.update(f"{MTP_LAYER_PREFIX}{k}{n}" for k in mtp for n in local)
                    continue
                layers = [
                    i
                    for i, kind in enumerate(kinds)
                    if op.layers in (None, kind) and op.attention in (None, attention[i])
                ]
                names.update(self.join_mca_name(i, n) for i in layers for n in local)
                last = (kinds[-1], attention[-1]) if kinds else None
                if last and op.layers in (None, last[0]) and op.attention in (None, last[1]):
                    # MTP layers are built like the last
                    names.update(f"{MTP_LAYER_PREFIX}{k}{MTP_INNER}{n}" for k in mtp for n in local)
        return names

    @staticmethod
    def op_config(mca_kwargs: Mapping[str, Any]) -> SimpleNamespace:
        """The Megatron config as the ops and the converter read it, with Megatron's defaults
        of the numbers they need, without building a TransformerConfig."""
        heads = mca_kwargs["num_attention_heads"]
        return SimpleNamespace(
            **{
                **mca_kwargs,
                "num_query_groups": mca_kwargs.get("num_query_groups") or heads,
                "kv_channels": mca_kwargs.get("kv_channels") or mca_kwargs["hidden_size"] // heads,
                "tie_embeddings_and_output_weights": bool(
                    mca_kwargs.get("tie_embeddings_and_output_weights", False)
                ),
            }
        )

    def mapper(self, mca_config: Any, to_mca: bool, problems: Any = None) -> WeightMapper:
        return WeightMapper(self, mca_config, to_mca, problems)
