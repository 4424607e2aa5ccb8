"""The `seed_oss` family: a dense decoder, converted by its template (Seed-OSS on McaGPTModel)."""

from ..family import register_family
from .template import TEMPLATE

register_family(TEMPLATE)
