"""Qwen3.5-MoE: Qwen3.5 with experts: template and model class (imported when first built)."""

from ..family import register_family
from .template import TEMPLATE

register_family(
    TEMPLATE,
    config_class="mcore_adapter.models.qwen3_5_moe.model:Qwen3_5MoeConfig",
    model_class="mcore_adapter.models.qwen3_5_moe.model:Qwen3_5MoeModel",
)
