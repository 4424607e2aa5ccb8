"""Qwen3-VL: interleaved mrope and deepstack: template and model class (imported when first built)."""

from ..family import register_family
from .template import TEMPLATE

register_family(
    TEMPLATE,
    config_class="mcore_adapter.models.qwen3_vl.model:Qwen3VLConfig",
    model_class="mcore_adapter.models.qwen3_vl.model:Qwen3VLModel",
)
