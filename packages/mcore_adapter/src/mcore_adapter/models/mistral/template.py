"""Mistral: a llama-shaped decoder with sliding-window attention."""

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
    "mistral",
    config_hf_to_mca={**DENSE_CONFIG_HF_TO_MCA, "sliding_window": "sliding_window"},
    weight_converters=dense_weight_converters(),
    hf_layer_prefix="model.layers.",
    constant_mca_config=DENSE_CONSTANT_MCA_CONFIG,
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    hf_config_expect=DENSE_HF_CONFIG_EXPECT,
    hf_config_defaults=dense_hf_config_defaults(
        max_position_embeddings=131072, num_key_value_heads=8, sliding_window=4096
    ),
    hf_architecture="MistralForCausalLM",
)
