"""Qwen3-VL: the Qwen3 decoder (q/k norm, no biases; fields under ``text_config``) with
interleaved multimodal rope, and the transformers vision tower (its deepstack mergers
included) kept whole under ``vision_model.``. The hub names the decoder
``model.language_model.*`` and the tower ``model.visual.*``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..common import DENSE_CONSTANT_MCA_CONFIG, ROTARY_INV_FREQ_KEYS, VISION_CONFIG_HF_TO_MCA, attention_ops
from ..converter.layout import LayoutError, ParallelLayout
from ..converter.ops import ConverOp, RenameConverOp, StackConverOp
from ..converter.template import register_template

CONFIG_HF_TO_MCA = {**VISION_CONFIG_HF_TO_MCA, "text_config.head_dim": "kv_channels"}


def global_ops() -> list[ConverOp]:
    return [
        RenameConverOp("model.language_model.embed_tokens.weight", "embedding.word_embeddings.weight"),
        RenameConverOp("model.language_model.norm.weight", "decoder.final_layernorm.weight"),
        RenameConverOp("lm_head.weight", "output_layer.weight"),
        RenameConverOp("model.visual.{}", "vision_model.{}"),
    ]


def qwen3_vl_template(
    model_type: str,
    architecture: str,
    mlp_ops: list[ConverOp],
    extra_constants: dict[str, Any] | None = None,
    **extra: Any,
) -> dict:
    """``register_template`` arguments of Qwen3-VL and Qwen3-VL-MoE (which differ in the MLP;
    ``extra`` adds or replaces arguments)."""
    return {
        "hf_model_type": model_type,
        "config_hf_to_mca": CONFIG_HF_TO_MCA,
        "weight_converters": [*global_ops(), *attention_ops(qk_norm=True), *mlp_ops],
        "hf_layer_prefix": "model.language_model.layers.",
        "constant_mca_config": {
            **DENSE_CONSTANT_MCA_CONFIG,
            "qk_layernorm": True,
            "position_embedding_type": "mrope",
            **(extra_constants or {}),
        },
        "hf_invalid_keys": ROTARY_INV_FREQ_KEYS,
        # transformers interleaves the rope axes whatever rope_parameters.mrope_interleaved says,
        # and computes default (unscaled) frequencies only when rope_type is "default".
        "hf_config_expect": {
            "text_config.hidden_act": "silu",
            "text_config.attention_bias": False,
            "text_config.rope_parameters.rope_type": "default",
        },
        "hf_architecture": architecture,
        "layout_rules": (deepstack_on_first_stage,),
        **extra,
    }


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


register_template(
    **qwen3_vl_template(
        "qwen3_vl",
        "Qwen3VLForConditionalGeneration",
        [
            RenameConverOp(".post_attention_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight"),
            StackConverOp([".mlp.gate_proj.weight", ".mlp.up_proj.weight"], ".mlp.linear_fc1.weight", dim=0),
            RenameConverOp(".mlp.down_proj.weight", ".mlp.linear_fc2.weight"),
        ],
    )
)
