"""ROLL's model providers and HF model implementations.

- ``roll_models.model_providers``: how every training and inference strategy gets its model,
  tokenizer and processor; importing it imports neither megatron-core nor DeepSpeed (each
  strategy's provider imports its backend when it runs).
- One folder per family that the pinned transformers does not ship (``internlm2``); importing
  ``roll_models`` registers them with transformers' Auto classes, so their hub checkpoints load
  without ``trust_remote_code``.
"""

__version__ = "0.1.0"

# model_type -> (config class, {transformers Auto class: model class}), as "module:Class" strings;
# a model class's name is its HF architecture. roll_infer reads this table to register the same
# architectures with the inference engines.
IMPLEMENTATIONS: dict[str, tuple[str, dict[str, str]]] = {
    "internlm2": (
        "roll_models.internlm2.configuration_internlm2:InternLM2Config",
        {"AutoModelForCausalLM": "roll_models.internlm2.modeling_internlm2:InternLM2ForCausalLM"},
    ),
}


def _load(target: str):
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _register_implementations() -> None:
    from .model_providers import register_model

    for model_type, (config_class, model_classes) in IMPLEMENTATIONS.items():
        classes = {auto: _load(target) for auto, target in model_classes.items()}
        register_model(model_type, _load(config_class), exist_ok=True, **classes)


_register_implementations()
