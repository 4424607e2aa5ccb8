"""Template blocks of the Qwen3-VL lineage: Qwen3-VL and Qwen3-VL-MoE (the Qwen3 decoder under
``text_config`` with interleaved multimodal rope and the deepstack vision tower), Qwen3.5 and
Qwen3.5-MoE (the same rope and tower naming over Qwen3-Next's hybrid decoder). The hub names the
decoder ``model.language_model.*`` and the tower ``model.visual.*``; the families differ in the
MLP, which each passes in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .common import (
    DENSE_CONSTANT_MCA_CONFIG,
    DROP,
    ROTARY_INV_FREQ_KEYS,
    VISION_CONFIG_HF_TO_MCA,
    attention_ops,
    derive,
    in_text_config,
)
from .converter.layout import LayoutError, ParallelLayout
from .converter.ops import ConverOp, RenameConverOp
from .linear_attention import (
    LINEAR_ATTENTION_CONSTANTS,
    LINEAR_ATTENTION_FREQ,
    LINEAR_ATTENTION_HF_TO_MCA,
    gated_attention_ops,
    gated_delta_net_ops,
    qwen3_5_in_proj,
)

QWEN3_VL_CONFIG_HF_TO_MCA = {**VISION_CONFIG_HF_TO_MCA, "text_config.head_dim": "kv_channels"}


def qwen3_vl_global_ops() -> list[ConverOp]:
    return [
        RenameConverOp("model.language_model.embed_tokens.weight", "embedding.word_embeddings.weight"),
        RenameConverOp("model.language_model.norm.weight", "decoder.final_layernorm.weight"),
        RenameConverOp("lm_head.weight", "output_layer.weight"),
        RenameConverOp("model.visual.{}", "vision_model.{}"),
    ]


def deepstack_layers(vision_config: Mapping[str, Any] | None) -> int:
    """How many decoder layers get vision features added after them (the tower's deepstack)."""
    return len((vision_config or {}).get("deepstack_visual_indexes") or ())


def deepstack_on_first_stage(model: Mapping[str, Any], layout: ParallelLayout) -> None:
    """Deepstack adds vision features after the first decoder layers; they must be on the first
    pipeline stage's first chunk, with the vision tower (see deepstack.py)."""
    deepstack = deepstack_layers(model.get("vision_config"))
    first = layout.chunks[0]
    if deepstack > len(first.layers):
        raise LayoutError(
            f"Qwen3-VL adds vision features after decoder layers 0..{deepstack - 1}, which must be on the "
            f"first pipeline stage with the vision tower; this layout gives its first chunk "
            f"{len(first.layers)} layer(s). Give num_layers_in_first_pipeline_stage >= {deepstack} (or "
            "fewer pipeline stages)"
        )


# Shared by the lineage: transformers interleaves the rope axes whatever
# rope_parameters.mrope_interleaved says, and computes default (unscaled) frequencies only when
# rope_type is "default".
LINEAGE_TEMPLATE: dict[str, Any] = {
    "hf_layer_prefix": "model.language_model.layers.",
    "hf_config_expect": {
        "text_config.hidden_act": "silu",
        "text_config.attention_bias": False,
        "text_config.rope_parameters.rope_type": "default",
    },
}


def qwen3_vl_template(
    model_type: str, architecture: str, mlp_ops: list[ConverOp], **changes: Any
) -> dict[str, Any]:
    """``register_template`` arguments of Qwen3-VL and Qwen3-VL-MoE (``changes`` as ``derive``'s)."""
    base = derive(
        LINEAGE_TEMPLATE,
        hf_model_type=model_type,
        hf_architecture=architecture,
        config_hf_to_mca=QWEN3_VL_CONFIG_HF_TO_MCA,
        weight_converters=[*qwen3_vl_global_ops(), *attention_ops(qk_norm=True), *mlp_ops],
        constant_mca_config={
            **DENSE_CONSTANT_MCA_CONFIG,
            "qk_layernorm": True,
            "position_embedding_type": "mrope",
        },
        hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
        layout_rules=(deepstack_on_first_stage,),
    )
    return derive(base, **changes)


QWEN3_5_CONFIG_HF_TO_MCA = {
    **QWEN3_VL_CONFIG_HF_TO_MCA,
    **{f"text_config.{hf}": mca for hf, mca in LINEAR_ATTENTION_HF_TO_MCA.items()},
    "text_config.rope_parameters.partial_rotary_factor": "rotary_percent",
}


def qwen3_5_template(
    model_type: str, architecture: str, mlp_ops: list[ConverOp], **changes: Any
) -> dict[str, Any]:
    """``register_template`` arguments of Qwen3.5 and Qwen3.5-MoE (``changes`` as ``derive``'s).
    The decoder's Gated DeltaNet keeps q/k/v, z, b and a as separate projections (Qwen3-Next
    fuses them per key head); no deepstack."""
    base = derive(
        LINEAGE_TEMPLATE,
        hf_model_type=model_type,
        hf_architecture=architecture,
        config_hf_to_mca=QWEN3_5_CONFIG_HF_TO_MCA,
        weight_converters=[
            *qwen3_vl_global_ops(),
            *gated_attention_ops(),
            *gated_delta_net_ops(qwen3_5_in_proj()),
            *mlp_ops,
        ],
        constant_mca_config={
            **DENSE_CONSTANT_MCA_CONFIG,
            "rotary_percent": DROP,
            **LINEAR_ATTENTION_CONSTANTS,
            "qk_layernorm": True,
            "position_embedding_type": "mrope",
        },
        hf_invalid_keys=["mtp.{}"],  # multi-token-prediction weights transformers skips too
        config_derived={"linear_attention_freq": in_text_config(LINEAR_ATTENTION_FREQ)},
    )
    return derive(base, **changes)
