"""InternLM2: a llama-like decoder under its own names (the HF implementation is roll_models'); the model is McaGPTModel."""

from ..family import register_family
from .template import TEMPLATE

register_family(TEMPLATE)
