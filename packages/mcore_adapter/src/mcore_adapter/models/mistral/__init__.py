"""The `mistral` family: a dense decoder, converted by its template (Mistral on McaGPTModel)."""

from ..family import register_family
from .template import TEMPLATE

register_family(TEMPLATE)
