"""InternLM2 (``model_type`` "internlm2"), registered with transformers' Auto classes when
``roll_models`` is imported: hub checkpoints load without ``trust_remote_code``."""

from .configuration_internlm2 import InternLM2Config
from .modeling_internlm2 import InternLM2ForCausalLM, InternLM2Model, InternLM2PreTrainedModel

__all__ = ["InternLM2Config", "InternLM2ForCausalLM", "InternLM2Model", "InternLM2PreTrainedModel"]
