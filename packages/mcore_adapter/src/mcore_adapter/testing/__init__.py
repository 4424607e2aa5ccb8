"""Built-in tiny models: the demo's model and the test fixtures of every registered template."""

from .tiny_models import (
    TINY_MODELS,
    TINY_VL_MODELS,
    VL_TOKENS,
    make_tiny_hf_checkpoint,
    tiny_hf_config,
    vl_prompt,
)

__all__ = [
    "TINY_MODELS",
    "TINY_VL_MODELS",
    "VL_TOKENS",
    "make_tiny_hf_checkpoint",
    "tiny_hf_config",
    "vl_prompt",
]
