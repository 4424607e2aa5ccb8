"""Qwen3.5: Qwen3-VL's rope over Qwen3-Next's hybrid decoder: template and model class (imported when first built)."""

from ..family import register_family
from .template import TEMPLATE

register_family(
    TEMPLATE,
    config_class="mcore_adapter.models.qwen3_5.model:Qwen3_5Config",
    model_class="mcore_adapter.models.qwen3_5.model:Qwen3_5Model",
)
