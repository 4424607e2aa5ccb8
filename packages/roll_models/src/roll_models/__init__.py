"""ROLL's model providers and HF model implementations.

- ``roll_models.model_providers``: how every training and inference strategy gets its model,
  tokenizer and processor; importing it imports neither megatron-core nor DeepSpeed (each
  strategy's provider imports its backend when it runs).
- One folder per family that the pinned transformers does not ship (``internlm2``); importing
  ``roll_models`` registers them with transformers' Auto classes, so their hub checkpoints load
  without ``trust_remote_code``.
"""

__version__ = "0.1.0"


def _register_implementations() -> None:
    from .internlm2 import InternLM2Config, InternLM2ForCausalLM
    from .model_providers import register_model

    register_model("internlm2", InternLM2Config, exist_ok=True, AutoModelForCausalLM=InternLM2ForCausalLM)


_register_implementations()
