"""DeepSeek-V3: multi-latent attention, sigmoid routing, MTP; the model is McaGPTModel."""

from ..family import register_family
from .template import TEMPLATE

register_family(TEMPLATE)
