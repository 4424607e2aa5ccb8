"""Qwen2-VL: the Qwen2 decoder (fields under ``text_config``) with multimodal rope, plus the
transformers vision tower, kept whole under ``vision_model.`` (replicated over tensor
parallelism, on the first pipeline stage)."""

from ..common import (
    ROTARY_INV_FREQ_KEYS,
    VISION_CONFIG_HF_TO_MCA,
    VISION_CONSTANT_MCA_CONFIG,
    VISION_HF_CONFIG_EXPECT,
    vision_weight_converters,
)
from ..converter.template import register_template

register_template(
    "qwen2_vl",
    config_hf_to_mca=VISION_CONFIG_HF_TO_MCA,
    weight_converters=vision_weight_converters(),
    hf_layer_prefix="model.layers.",
    constant_mca_config=VISION_CONSTANT_MCA_CONFIG,
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    hf_config_expect=VISION_HF_CONFIG_EXPECT,
)
