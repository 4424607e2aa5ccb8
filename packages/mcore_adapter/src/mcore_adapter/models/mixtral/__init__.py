"""Mixtral: Mistral's attention over experts; the model is McaGPTModel."""

from ..family import register_family
from .template import TEMPLATE

register_family(TEMPLATE)
