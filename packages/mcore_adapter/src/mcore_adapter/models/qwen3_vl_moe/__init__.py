"""Qwen3-VL-MoE: template and model class (registered lazily with AutoConfig / AutoModel)."""

from ..auto.config_auto import register_config
from ..auto.modeling_auto import register_model
from . import template  # noqa: F401  (registers the conversion template)

register_config("qwen3_vl_moe", "mcore_adapter.models.qwen3_vl_moe.model:Qwen3VLMoeConfig")
register_model("qwen3_vl_moe", "mcore_adapter.models.qwen3_vl_moe.model:Qwen3VLMoeModel")
