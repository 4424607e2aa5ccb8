"""ROLL's Hugging Face model implementations and the per-strategy ``model_providers`` registry.

The families supported today are those transformers implements itself (llama, mistral, qwen2,
qwen3); they need no code here. Custom ``PreTrainedModel`` classes and the providers registry
join this package as the issues that need them land.
"""

__version__ = "0.1.0"
