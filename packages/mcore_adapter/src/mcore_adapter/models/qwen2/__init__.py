"""The `qwen2` family: a dense decoder, converted by its template (Qwen2 on McaGPTModel)."""

from ..family import register_family
from .template import TEMPLATE

register_family(TEMPLATE)
