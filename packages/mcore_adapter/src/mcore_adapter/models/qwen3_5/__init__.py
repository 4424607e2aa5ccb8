"""Qwen3.5: template and model class (registered lazily with AutoConfig / AutoModel)."""

from ..auto.config_auto import register_config
from ..auto.modeling_auto import register_model
from . import template  # noqa: F401  (registers the conversion template)

register_config("qwen3_5", "mcore_adapter.models.qwen3_5.model:Qwen3_5Config")
register_model("qwen3_5", "mcore_adapter.models.qwen3_5.model:Qwen3_5Model")
