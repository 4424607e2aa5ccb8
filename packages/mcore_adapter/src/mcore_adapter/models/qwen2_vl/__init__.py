"""Qwen2-VL: the vision-language base (multimodal rope positions in ``rope_index``): template and model class (imported when first built)."""

from ..family import register_family
from .template import TEMPLATE

register_family(
    TEMPLATE,
    config_class="mcore_adapter.models.qwen2_vl.model:Qwen2VLConfig",
    model_class="mcore_adapter.models.qwen2_vl.model:Qwen2VLModel",
)
