"""Built-in tiny models: the demo's model and the test fixtures of every registered template."""

from .tiny_models import TINY_MODELS, make_tiny_hf_checkpoint, tiny_hf_config

__all__ = ["TINY_MODELS", "make_tiny_hf_checkpoint", "tiny_hf_config"]
