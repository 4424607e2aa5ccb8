"""Qwen2-MoE: experts with a gated shared expert; the model is McaGPTModel."""

from ..family import register_family
from .template import TEMPLATE

register_family(TEMPLATE)
