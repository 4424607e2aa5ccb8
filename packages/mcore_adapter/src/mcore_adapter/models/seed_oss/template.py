"""Seed-OSS: a llama-style dense decoder with q/k/v biases (``attention_bias``, on by default)
and dropout on each residual branch (``residual_dropout``, Megatron's ``hidden_dropout``)."""

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
    "seed_oss",
    config_hf_to_mca={
        **DENSE_CONFIG_HF_TO_MCA,
        "attention_bias": "add_qkv_bias",
        "residual_dropout": "hidden_dropout",
    },
    weight_converters=dense_weight_converters(qkv_bias="add_qkv_bias"),
    hf_layer_prefix="model.layers.",
    constant_mca_config={k: v for k, v in DENSE_CONSTANT_MCA_CONFIG.items() if k != "hidden_dropout"},
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    # An o_proj bias alone, or MLP biases, are not what Megatron's add_bias_linear adds (both).
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, "attention_out_bias": False, "mlp_bias": False},
    hf_config_defaults=dense_hf_config_defaults(
        head_dim=128,
        num_key_value_heads=8,
        max_position_embeddings=524288,
        attention_bias=True,
        attention_out_bias=False,
        attention_dropout=0.1,
        residual_dropout=0.1,
        mlp_bias=False,
    ),
    hf_architecture="SeedOssForCausalLM",
)
