"""ROLL's model providers and HF model implementations.

- ``roll_models.model_providers``: how every training and inference strategy gets its model,
  tokenizer and processor; importing it imports neither megatron-core nor DeepSpeed (each
  strategy's provider imports its backend when it runs).
- One folder per family that the pinned transformers does not ship (``internlm2``); importing
  ``roll_models`` registers them with transformers' Auto classes, so their hub checkpoints load
  without ``trust_remote_code``. As transformers does for its own models, a family's modules
  are imported when it is first used, not here (see ``lazy_auto``).
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

_imported: set[str] = set()


def implementation_imported(model_type: str) -> None:
    """Register the config class of ``model_type``, now imported, with transformers' AutoConfig
    in place of its stand-in, and its model classes, still lazily, with their Auto classes. A
    family package calls this when it is imported: a config class imported directly then builds
    its models through the Auto classes as well."""
    if model_type in _imported:
        return
    _imported.add(model_type)
    from mcore_adapter.registry import load_object

    from .lazy_auto import lazy_model_class
    from .model_providers import register_model

    config_target, model_targets = IMPLEMENTATIONS[model_type]
    config_class = load_object(config_target)
    models = {auto: lazy_model_class(target, auto, config_class) for auto, target in model_targets.items()}
    register_model(model_type, config_class, exist_ok=True, **models)


def _register_implementations() -> None:
    from .lazy_auto import register_config

    for model_type, (config_target, _) in IMPLEMENTATIONS.items():
        register_config(model_type, config_target, lambda _cls, t=model_type: implementation_imported(t))


_register_implementations()
