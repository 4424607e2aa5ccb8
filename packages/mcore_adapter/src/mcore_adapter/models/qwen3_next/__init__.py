"""Qwen3-Next: Gated DeltaNet and gated attention (Megatron builds the hybrid layers from the config); the model is McaGPTModel."""

from ..family import register_family
from .template import TEMPLATE

register_family(TEMPLATE)
