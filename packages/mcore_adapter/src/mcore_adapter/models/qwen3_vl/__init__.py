"""Qwen3-VL: template and model class (registered lazily with AutoConfig / AutoModel)."""

from ..auto.config_auto import register_config
from ..auto.modeling_auto import register_model
from . import template  # noqa: F401  (registers the conversion template)

register_config("qwen3_vl", "mcore_adapter.models.qwen3_vl.model:Qwen3VLConfig")
register_model("qwen3_vl", "mcore_adapter.models.qwen3_vl.model:Qwen3VLModel")
