"""Qwen3.5: a vision-language model whose decoder is Qwen3-Next's hybrid (Gated DeltaNet layers
between gated full-attention layers, zero-centered norms, partial rotary) with Qwen3-VL's
interleaved multimodal rope, and a vision tower without deepstack. The decoder's Gated DeltaNet
keeps q/k/v, z, b and a as separate projections (Qwen3-Next fuses them per key head)."""

from __future__ import annotations

from typing import Any

from ..common import DENSE_CONSTANT_MCA_CONFIG, in_text_config
from ..converter.ops import ConverOp, RenameConverOp, StackConverOp
from ..converter.template import register_template
from ..linear_attention import (
    LINEAR_ATTENTION_CONSTANTS,
    LINEAR_ATTENTION_FREQ,
    LINEAR_ATTENTION_HF_TO_MCA,
    gated_attention_ops,
    gated_delta_net_ops,
    qwen3_5_in_proj,
)
from ..qwen3_vl.template import CONFIG_HF_TO_MCA, global_ops

HYBRID_CONFIG_HF_TO_MCA = {
    **CONFIG_HF_TO_MCA,
    **{f"text_config.{hf}": mca for hf, mca in LINEAR_ATTENTION_HF_TO_MCA.items()},
    "text_config.rope_parameters.partial_rotary_factor": "rotary_percent",
}


def qwen3_5_template(model_type: str, architecture: str, mlp_ops: list[ConverOp], **extra: Any) -> dict:
    """``register_template`` arguments of Qwen3.5 and Qwen3.5-MoE (which differ in the MLP;
    ``extra`` replaces or adds arguments)."""
    constants = {
        **{k: v for k, v in DENSE_CONSTANT_MCA_CONFIG.items() if k != "rotary_percent"},
        **LINEAR_ATTENTION_CONSTANTS,
        "qk_layernorm": True,
        "position_embedding_type": "mrope",
    }
    return {
        "hf_model_type": model_type,
        "config_hf_to_mca": HYBRID_CONFIG_HF_TO_MCA,
        "weight_converters": [
            *global_ops(),
            *gated_attention_ops(),
            *gated_delta_net_ops(qwen3_5_in_proj()),
            *mlp_ops,
        ],
        "hf_layer_prefix": "model.language_model.layers.",
        "constant_mca_config": {**constants, **extra.pop("extra_constants", {})},
        "hf_invalid_keys": ["mtp.{}"],  # multi-token-prediction weights transformers skips too
        # transformers interleaves the rope axes whatever mrope_interleaved says
        "hf_config_expect": {
            "text_config.hidden_act": "silu",
            "text_config.attention_bias": False,
            "text_config.rope_parameters.rope_type": "default",
        },
        "hf_architecture": architecture,
        "config_derived": {
            "linear_attention_freq": in_text_config(LINEAR_ATTENTION_FREQ),
            **extra.pop("config_derived", {}),
        },
        **extra,
    }


register_template(
    **qwen3_5_template(
        "qwen3_5",
        "Qwen3_5ForConditionalGeneration",
        [
            RenameConverOp(".post_attention_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight"),
            StackConverOp([".mlp.gate_proj.weight", ".mlp.up_proj.weight"], ".mlp.linear_fc1.weight", dim=0),
            RenameConverOp(".mlp.down_proj.weight", ".mlp.linear_fc2.weight"),
        ],
    )
)
