"""Qwen2-VL: template, model class (registered lazily with AutoConfig / AutoModel) and the
multimodal rope positions (``rope_index``)."""

from ..auto.config_auto import register_config
from ..auto.modeling_auto import register_model
from . import template  # noqa: F401  (registers the conversion template)

register_config("qwen2_vl", "mcore_adapter.models.qwen2_vl.model:Qwen2VLConfig")
register_model("qwen2_vl", "mcore_adapter.models.qwen2_vl.model:Qwen2VLModel")
