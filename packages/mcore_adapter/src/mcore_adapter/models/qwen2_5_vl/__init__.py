"""Qwen2.5-VL: the vision-language base with a window-attention tower: template and model class (imported when first built)."""

from ..family import register_family
from .template import TEMPLATE

register_family(
    TEMPLATE,
    config_class="mcore_adapter.models.qwen2_5_vl.model:Qwen2_5_VLConfig",
    model_class="mcore_adapter.models.qwen2_5_vl.model:Qwen2_5_VLModel",
)
