"""Llama (incl. Llama 3.x rope scaling): the reference dense decoder."""

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
    "llama",
    config_hf_to_mca=DENSE_CONFIG_HF_TO_MCA,
    weight_converters=dense_weight_converters(),
    hf_layer_prefix="model.layers.",
    constant_mca_config=DENSE_CONSTANT_MCA_CONFIG,
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    # Llama's attention_bias also adds an o_proj bias, and mlp_bias biases on the MLP, which
    # Megatron's add_qkv_bias does not cover.
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, "attention_bias": False, "mlp_bias": False},
    hf_config_defaults=dense_hf_config_defaults(
        max_position_embeddings=2048, attention_bias=False, mlp_bias=False
    ),
    hf_architecture="LlamaForCausalLM",
)
