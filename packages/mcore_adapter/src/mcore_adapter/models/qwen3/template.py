"""Qwen3: a dense decoder with per-head RMSNorm on queries and keys."""

from ..common import (
    DENSE_CONFIG_HF_TO_MCA,
    DENSE_CONSTANT_MCA_CONFIG,
    DENSE_HF_CONFIG_EXPECT,
    ROTARY_INV_FREQ_KEYS,
    dense_hf_config_defaults,
    dense_weight_converters,
)
from ..converter.template import register_template

register_template(
    "qwen3",
    config_hf_to_mca=DENSE_CONFIG_HF_TO_MCA,
    weight_converters=dense_weight_converters(qk_norm=True),
    hf_layer_prefix="model.layers.",
    constant_mca_config={**DENSE_CONSTANT_MCA_CONFIG, "qk_layernorm": True},
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    # attention_bias in Qwen3 also biases o_proj, which Megatron's add_qkv_bias does not cover.
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, "attention_bias": False, "use_sliding_window": False},
    hf_config_defaults=dense_hf_config_defaults(
        head_dim=128,
        max_position_embeddings=32768,
        num_key_value_heads=32,
        attention_bias=False,
        use_sliding_window=False,
    ),
    hf_architecture="Qwen3ForCausalLM",
)
