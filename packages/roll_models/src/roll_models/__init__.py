"""ROLL's model providers: how every training and inference strategy gets its model, tokenizer
and processor (``roll_models.model_providers``), and, as they land, HF implementations of
families transformers does not ship.

Importing the package imports neither megatron-core nor DeepSpeed: each strategy's provider
imports its backend when it runs.
"""

__version__ = "0.1.0"
