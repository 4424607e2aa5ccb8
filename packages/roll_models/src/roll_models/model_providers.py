"""How every training and inference strategy gets its model, tokenizer and processor.

A strategy (``hf_infer``, ``deepspeed_train``, ``deepspeed_infer``, ``megatron_train``,
``megatron_infer``; users add their own or
replace one with ``register_model_provider``) maps ``ModelArgs`` to a ready model. Providers
live in ``roll_models.providers.<backend>`` and are imported when first asked for, so that
``import roll_models`` costs no megatron (or DeepSpeed) import. ``register_model`` adds a model
implementation for a ``model_type`` to transformers' Auto classes, so that every strategy finds
it by its config.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# strategy -> provider, or "module:function" until first use.
_PROVIDERS: dict[str, Callable[..., Any] | str] = {
    "hf_infer": "roll_models.providers.hf:hf_infer",
    "deepspeed_train": "roll_models.providers.deepspeed:deepspeed_train",
    "deepspeed_infer": "roll_models.providers.deepspeed:deepspeed_infer",
    "megatron_train": "roll_models.providers.megatron:megatron_train",
    "megatron_infer": "roll_models.providers.megatron:megatron_infer",
}


class ProviderError(ValueError):
    """A model, tokenizer or processor cannot be provided as asked (the message says why)."""


@dataclass
class ModelArgs:
    """What a strategy needs to know to build a model.

    ``head`` is the model's output: the language model's logits, or a 1-wide value or reward
    head (transformers' token / sequence classification with one label); ``dtype`` is the
    parameters' dtype; ``attn_implementation`` is transformers' (None: the
    fastest one available here); ``layout`` is the Megatron parallel layout (``tp``, ``pp``,
    ``vpp``, ``ep``, ``etp``) of the megatron strategies; ``deepspeed``, ``optimizer``,
    ``gradient_checkpointing`` and ``lora`` configure the deepspeed strategies.
    """

    model_name_or_path: str
    head: str = "lm"  # "lm"; "value" (per-token value, a critic) or "reward" (per-sequence score)
    dtype: str = "bfloat16"
    attn_implementation: str | None = None
    layout: dict[str, int | None] = field(default_factory=dict)
    deepspeed: dict[str, Any] | None = None  # DeepSpeed config (ZeRO stage...) of the deepspeed strategies
    optimizer: Callable[[list], Any] | None = None  # deepspeed_train: a torch optimizer of the parameters
    gradient_checkpointing: bool = False
    lora: dict[str, Any] | None = None  # peft.LoraConfig arguments: train LoRA adapters only
    extra: dict[str, Any] = field(default_factory=dict)  # passed on to the backend's from_pretrained


def register_model_provider(
    strategy: str, provider: Callable[..., Any] | str, overwrite: bool = False
) -> None:
    """Add a strategy, or replace one (``overwrite=True``). ``provider(model_args,
    is_trainable)`` returns the model; a "module:function" string is imported on first use."""
    if strategy in _PROVIDERS and not overwrite:
        raise ProviderError(
            f"strategy {strategy!r} already has a provider; pass overwrite=True to replace it"
        )
    _PROVIDERS[strategy] = provider


def registered_strategies() -> list[str]:
    return sorted(_PROVIDERS)


def get_model_provider(strategy: str) -> Callable[..., Any]:
    try:
        provider = _PROVIDERS[strategy]
    except KeyError:
        raise ProviderError(
            f"no model provider for strategy {strategy!r}; registered: {', '.join(registered_strategies())}. "
            "Add one with roll_models.model_providers.register_model_provider"
        ) from None
    if isinstance(provider, str):
        module, _, name = provider.partition(":")
        provider = _PROVIDERS[strategy] = getattr(importlib.import_module(module), name)
    return provider


def default_model_provider(strategy: str, model_args: ModelArgs, is_trainable: bool = False) -> Any:
    """The model of ``model_args`` as ``strategy`` runs it."""
    return get_model_provider(strategy)(model_args, is_trainable)


# ---------------------------------------------------------------------- HF configs and classes
def load_config(path: str, trust_remote_code: bool = False):
    """transformers' config of a checkpoint; a ``model_type`` nobody registered is an error that
    lists what is."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "model_type" not in str(e) and "recognize" not in str(e):
            raise
        import json
        import os

        from transformers.utils import CONFIG_NAME

        with open(os.path.join(path, CONFIG_NAME)) as f:
            model_type = json.load(f).get("model_type")
        raise ProviderError(
            f"{path}: model_type {model_type!r} is registered neither with transformers nor with "
            f"roll_models ({len(CONFIG_MAPPING)} types are, e.g. {', '.join(sorted(CONFIG_MAPPING)[:8])}, ...); "
            "register its implementation with roll_models.model_providers.register_model"
        ) from None


def register_model(
    model_type: str, config_class: type, exist_ok: bool = False, **model_classes: type
) -> None:
    """Register a model implementation (a ``PretrainedConfig`` subclass and ``PreTrainedModel``
    classes) for ``model_type`` with transformers' Auto classes, so that every strategy builds
    it from a checkpoint's config. ``model_classes`` are keyed by Auto class name, e.g.
    ``AutoModelForCausalLM=MyForCausalLM``."""
    import transformers

    if getattr(config_class, "model_type", None) != model_type:
        raise ProviderError(
            f"{config_class.__name__}.model_type is {getattr(config_class, 'model_type', None)!r}, "
            f"not {model_type!r}: transformers finds a config class by that attribute"
        )
    transformers.AutoConfig.register(model_type, config_class, exist_ok=exist_ok)
    for auto_name, model_class in model_classes.items():
        auto = getattr(transformers, auto_name, None)
        if auto is None or not hasattr(auto, "register"):
            raise ProviderError(f"{auto_name} is not one of transformers' Auto model classes")
        auto.register(config_class, model_class, exist_ok=exist_ok)


# ---------------------------------------------------------------------- tokenizer and processor
def default_tokenizer_provider(path: str, padding_side: str = "left", trust_remote_code: bool = False):
    """The checkpoint's tokenizer, padding on the left (generation appends on the right) and with
    a pad token (the eos token when the tokenizer has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, padding_side=padding_side, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise ProviderError(f"{path}: no tokenizer could be loaded ({e})") from e
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ProviderError(
                f"{path}: the tokenizer has neither a pad token nor an eos token to pad with; "
                "set tokenizer.pad_token (or add pad_token to tokenizer_config.json)"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_processor_provider(path: str, trust_remote_code: bool = False):
    """The processor of a vision-language checkpoint; ``None`` for a text model. A processor
    that the checkpoint declares but that fails to load is an error, not ``None``."""
    from transformers import AutoProcessor

    config = load_config(path, trust_remote_code)
    if getattr(config, "vision_config", None) is None:
        return None
    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ProviderError(f"{path}: the processor of this vision-language model does not load ({e})") from e
