"""The `llama` family: a dense decoder, converted by its template (Llama on McaGPTModel)."""

from ..family import register_family
from .template import TEMPLATE

register_family(TEMPLATE)
