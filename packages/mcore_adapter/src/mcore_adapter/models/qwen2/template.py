"""Qwen2: a dense decoder with biases on q/k/v (not on o_proj or the MLP)."""

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
    "qwen2",
    config_hf_to_mca=DENSE_CONFIG_HF_TO_MCA,
    weight_converters=dense_weight_converters(qkv_bias=True),
    hf_layer_prefix="model.layers.",
    constant_mca_config={**DENSE_CONSTANT_MCA_CONFIG, "add_qkv_bias": True},
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, "use_sliding_window": False},
    # Qwen2Config has no head_dim field: None leaves Megatron's default, hidden / heads, Qwen2's too.
    hf_config_defaults=dense_hf_config_defaults(
        head_dim=None, max_position_embeddings=32768, num_key_value_heads=32, use_sliding_window=False
    ),
    hf_architecture="Qwen2ForCausalLM",
)
