"""Qwen3.5-MoE: template and model class (registered lazily with AutoConfig / AutoModel)."""

from ..auto.config_auto import register_config
from ..auto.modeling_auto import register_model
from . import template  # noqa: F401  (registers the conversion template)

register_config("qwen3_5_moe", "mcore_adapter.models.qwen3_5_moe.model:Qwen3_5MoeConfig")
register_model("qwen3_5_moe", "mcore_adapter.models.qwen3_5_moe.model:Qwen3_5MoeModel")
