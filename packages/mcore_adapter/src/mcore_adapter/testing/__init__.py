"""Built-in tiny models: the demo's model and the test fixtures of every registered template."""

from .tiny_models import (
    MOE_MODELS,
    TINY_MODELS,
    TINY_TOKEN_IDS,
    TINY_VL_MODELS,
    VL_TOKENS,
    head_model_types,
    make_tiny_demo_checkpoint,
    make_tiny_head_checkpoint,
    make_tiny_hf_checkpoint,
    save_with_fused_experts,
    save_with_transposed_fused_experts,
    tiny_hf_config,
    vl_prompt,
)

__all__ = [
    "MOE_MODELS",
    "TINY_MODELS",
    "TINY_TOKEN_IDS",
    "TINY_VL_MODELS",
    "VL_TOKENS",
    "head_model_types",
    "make_tiny_demo_checkpoint",
    "make_tiny_head_checkpoint",
    "make_tiny_hf_checkpoint",
    "save_with_fused_experts",
    "save_with_transposed_fused_experts",
    "tiny_hf_config",
    "vl_prompt",
]
