"""Qwen2.5-VL: converted like Qwen2-VL (its vision tower differs inside, which the template
does not see: the tower's weights move whole)."""

from ..common import (
    ROTARY_INV_FREQ_KEYS,
    VISION_CONFIG_HF_TO_MCA,
    VISION_CONSTANT_MCA_CONFIG,
    VISION_HF_CONFIG_EXPECT,
    vision_weight_converters,
)
from ..converter.template import register_template

register_template(
    "qwen2_5_vl",
    config_hf_to_mca=VISION_CONFIG_HF_TO_MCA,
    weight_converters=vision_weight_converters(),
    hf_layer_prefix="model.layers.",
    constant_mca_config=VISION_CONSTANT_MCA_CONFIG,
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    hf_config_expect=VISION_HF_CONFIG_EXPECT,
)
