"""GLM-4.5: DeepSeek-V3's routing over grouped-query attention; the model is McaGPTModel."""

from ..family import register_family
from .template import TEMPLATE

register_family(TEMPLATE)
