"""Qwen3-VL-MoE: Qwen3-VL over the Qwen3-MoE decoder: template and model class (imported when first built)."""

from ..family import register_family
from .template import TEMPLATE

register_family(
    TEMPLATE,
    config_class="mcore_adapter.models.qwen3_vl_moe.model:Qwen3VLMoeConfig",
    model_class="mcore_adapter.models.qwen3_vl_moe.model:Qwen3VLMoeModel",
)
