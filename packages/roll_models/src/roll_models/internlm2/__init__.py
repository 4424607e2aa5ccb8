"""InternLM2 (``model_type`` "internlm2"), registered with transformers' Auto classes when
``roll_models`` is imported: hub checkpoints load without ``trust_remote_code``. The modeling
code is imported on first use."""

from typing import Any

from .. import implementation_imported
from .configuration_internlm2 import InternLM2Config

implementation_imported(InternLM2Config.model_type)

_MODELING = ("InternLM2ForCausalLM", "InternLM2Model", "InternLM2PreTrainedModel")
__all__ = ["InternLM2Config", *_MODELING]


def __getattr__(name: str) -> Any:
    if name in _MODELING:
        from . import modeling_internlm2

        return getattr(modeling_internlm2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
