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

import dataclasses
import difflib
import numbers
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mcore_adapter.registry import find_module_spec, load_object, split_ref

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


class ArgumentError(ProviderError):
    """A malformed argument, refused at the call: the message names it, says what was expected,
    what was found and what to do."""


@dataclass
class ModelArgs:
    """What a strategy needs to know to build a model.

    ``head`` is the model's output: the language model's logits, or a 1-wide value or reward
    head (transformers' token / sequence classification with one label); ``dtype`` is the
    parameters' dtype; ``attn_implementation`` is transformers' (None: the
    fastest one available here); ``layout`` is the Megatron parallel layout of the megatron
    strategies: an ``mcore_adapter.ParallelLayout`` or its process-group sizes by name
    (``{"tp": 2, "pp": 2}``); ``deepspeed``, ``optimizer``,
    ``gradient_checkpointing`` and ``lora`` configure the deepspeed strategies.
    """

    model_name_or_path: str
    head: str = "lm"  # "lm"; "value" (per-token value, a critic) or "reward" (per-sequence score)
    dtype: str = "bfloat16"
    attn_implementation: str | None = None
    layout: Any = field(default_factory=dict)  # a ParallelLayout, or a dict of its sizes
    deepspeed: dict[str, Any] | None = None  # DeepSpeed config (ZeRO stage...) of the deepspeed strategies
    optimizer: Callable[[list], Any] | None = None  # deepspeed_train: a torch optimizer of the parameters
    gradient_checkpointing: bool = False
    lora: dict[str, Any] | None = None  # peft.LoraConfig arguments: train LoRA adapters only
    extra: dict[str, Any] = field(default_factory=dict)  # passed on to the backend's from_pretrained


def register_model_provider(
    strategy: str, provider: Callable[..., Any] | str, overwrite: bool = False
) -> None:
    """Add a strategy, or replace one (``overwrite=True``). ``provider(model_args,
    is_trainable)`` returns the model; a "module:function" string is imported on first use (and
    checked now: well formed, its module on the import path)."""
    check_provider(strategy, provider)
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
        module, name = split_ref(provider)
        try:
            provider = _PROVIDERS[strategy] = load_object(provider)
        except AttributeError:
            raise ProviderError(
                f"the provider of strategy {strategy!r} is {provider!r}, but module {module!r} has no "
                f"{name!r}; register the right name with register_model_provider(..., overwrite=True)"
            ) from None
    return provider


def default_model_provider(strategy: str, model_args: ModelArgs, is_trainable: bool = False) -> Any:
    """The model of ``model_args`` as ``strategy`` runs it."""
    return get_model_provider(strategy)(model_args, is_trainable)


# ---------------------------------------------------------------------- argument checks
# Every provider calls check_model_args before it imports its backend or reads a checkpoint, so
# that a malformed argument is refused at the call, by name.
HEADS = ("lm", "value", "reward")
# The strategies that apply each optional argument (any other refuses it: nothing is ignored).
_APPLIED_BY = {
    "layout": "megatron_train, megatron_infer",
    "deepspeed": "deepspeed_train, deepspeed_infer",
    "lora": "deepspeed_train, deepspeed_infer",
    "optimizer": "deepspeed_train",
    "gradient_checkpointing": "deepspeed_train",
}
ZERO_STAGES = (0, 1, 2, 3)
# backend -> (files one of which marks a checkpoint directory, whether a hub id "org/name" loads)
CHECKPOINTS = {"hf": (("config.json",), True), "megatron": (("config.json", "mca_config.json"), False)}
_HUB_ID = re.compile(r"[\w-][\w.-]*(/[\w-][\w.-]*)?")  # no leading "/", "." or "~"


def _bad(name: str, expected: str, found: Any, todo: str) -> ArgumentError:
    return ArgumentError(f"{name} must be {expected}, not {found!r} ({type(found).__name__}); {todo}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_keys(name: str, given: Mapping, accepted: tuple[str, ...] | list[str], what: str) -> None:
    unknown = sorted(set(given) - set(accepted), key=str)
    if unknown:
        close = [m for k in unknown for m in difflib.get_close_matches(str(k), accepted, n=1)]
        raise ArgumentError(
            f"{name} keys {unknown} are not {what}: use {', '.join(accepted)}"
            + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
        )


def check_model_path(path: Any, backend: str = "hf") -> None:
    """A checkpoint directory (or, for transformers, a hub id): a path that exists but holds no
    config, or that does not exist and is no hub id, is refused before transformers or Megatron
    sees it."""
    name, (configs, hub) = "model_args.model_name_or_path", CHECKPOINTS[backend]
    expected = "a checkpoint directory" + (" or a hub id 'org/name'" if hub else "")
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise _bad(name, expected, path, "give the directory that holds the checkpoint's config.json")
    path = os.fspath(path)
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, c)) for c in configs):
            raise ArgumentError(
                f"{name} {path!r} is a directory without {' or '.join(configs)}, so not a checkpoint; "
                "give the directory that holds the checkpoint's config"
            )
    elif os.path.exists(path):
        raise _bad(name, expected, path, "that is a file: give the directory that holds it")
    elif not (hub and _looks_like_hub_id(path)):
        raise ArgumentError(
            f"{name} {path!r} does not exist; expected {expected}: check the path (relative paths "
            f"start from {os.getcwd()!r})" + ("" if hub else "; download a hub checkpoint first")
        )


def _looks_like_hub_id(path: str) -> bool:
    """Of the form name or org/name, and no local path: not absolute, not ./ ../ ~, no "org" folder here."""
    return _HUB_ID.fullmatch(path) is not None and not ("/" in path and os.path.isdir(path.split("/")[0]))


def check_layout(layout: Any) -> None:
    from mcore_adapter.models.converter.layout import ParallelLayout

    if isinstance(layout, ParallelLayout):  # checked against the model when it is built
        return
    if not isinstance(layout, Mapping):
        raise _bad(
            "model_args.layout",
            "a ParallelLayout or a dict of Megatron parallel sizes",
            layout,
            "e.g. {'tp': 2, 'pp': 1}",
        )
    _check_keys("model_args.layout", layout, ParallelLayout.SIZES, "Megatron's parallel sizes")
    for key, size in layout.items():
        if size is not None and not (_is_int(size) and size > 0):
            raise _bad(
                f"model_args.layout[{key!r}]", "a positive int (or None: 1)", size, f"e.g. {{{key!r}: 2}}"
            )


def check_deepspeed(config: Any) -> None:
    if config is None:
        return
    if not isinstance(config, Mapping):
        raise _bad(
            "model_args.deepspeed", "a dict (DeepSpeed's config)", config, "json.load a config file first"
        )
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, Mapping):
        raise _bad("model_args.deepspeed['zero_optimization']", "a dict", zero, "e.g. {'stage': 3}")
    stage = zero.get("stage", 0)
    if not (_is_int(stage) and stage in ZERO_STAGES):
        raise _bad(
            "model_args.deepspeed['zero_optimization']['stage']",
            "a ZeRO stage, the int 0, 1, 2 or 3",
            stage,
            "DeepSpeed has no other stages (3 partitions the parameters)",
        )


def check_lora(lora: Any) -> None:
    if lora is None:
        return
    example = "e.g. {'r': 8, 'lora_alpha': 16, 'target_modules': ['q_proj', 'v_proj']}"
    if not isinstance(lora, Mapping):
        raise _bad("model_args.lora", "a dict of peft.LoraConfig arguments", lora, example)
    from peft import LoraConfig

    accepted = sorted(f.name for f in dataclasses.fields(LoraConfig) if f.init)
    _check_keys("model_args.lora", lora, accepted, "peft.LoraConfig's arguments")
    rank = lora.get("r", 8)
    if not (_is_int(rank) and rank > 0):
        raise _bad("model_args.lora['r']", "a positive int (the adapters' rank)", rank, example)


def check_model_args(model_args: ModelArgs, backend: str = "hf", unused: tuple[str, ...] = ()) -> None:
    """The checks every provider makes first: path, head, layout, DeepSpeed config and LoRA;
    an argument in ``unused`` (one the calling strategy does not apply) must not be given."""
    for name in unused:
        value = getattr(model_args, name)
        if value:  # None, {} and False are the defaults: not asked for
            raise ArgumentError(
                f"model_args.{name} is given ({str(value)[:80]}), but this strategy does not apply it; "
                f"drop it, or use a strategy that does ({_APPLIED_BY[name]})"
            )
    check_model_path(model_args.model_name_or_path, backend)
    if model_args.head not in HEADS:
        raise _bad(
            "model_args.head", f"one of {', '.join(map(repr, HEADS))}", model_args.head, "see ModelArgs"
        )
    check_layout(model_args.layout)
    check_deepspeed(model_args.deepspeed)
    check_lora(model_args.lora)
    if model_args.optimizer is not None and not callable(model_args.optimizer):
        raise _bad(
            "model_args.optimizer",
            "a function of the parameters",
            model_args.optimizer,
            "e.g. lambda params: torch.optim.AdamW(params)",
        )


def check_provider(strategy: Any, provider: Any) -> None:
    """``register_model_provider``'s arguments: a name, and a function or a "module:function"
    string whose module is on the import path (found without importing it)."""
    if not isinstance(strategy, str) or not strategy.strip():
        raise _bad("strategy", "a non-empty name", strategy, "e.g. register_model_provider('my_infer', fn)")
    if callable(provider):
        return
    expected = "a function (model_args, is_trainable) -> model, or a 'module:function' string"
    if not isinstance(provider, str):
        raise _bad("provider", expected, provider, "e.g. 'my_package.providers:my_infer'")
    module, _, function = provider.partition(":")
    if not (all(p.isidentifier() for p in module.split(".")) and function.isidentifier()):
        raise _bad("provider", expected, provider, "e.g. 'my_package.providers:my_infer'")
    if find_module_spec(module) is None:
        raise ArgumentError(
            f"provider {provider!r}: module {module!r} is not on the import path; install its "
            "package or correct the name"
        )


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
