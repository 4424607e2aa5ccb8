"""Qwen2.5-VL: template and model class (registered lazily with AutoConfig / AutoModel)."""

from ..auto.config_auto import register_config
from ..auto.modeling_auto import register_model
from . import template  # noqa: F401  (registers the conversion template)

register_config("qwen2_5_vl", "mcore_adapter.models.qwen2_5_vl.model:Qwen2_5_VLConfig")
register_model("qwen2_5_vl", "mcore_adapter.models.qwen2_5_vl.model:Qwen2_5_VLModel")
