"""transformers' Auto classes told about a model implementation without importing it.

transformers registers its own models by name and imports a model's modules when it is first
used. Its public ``register`` functions take classes, and importing ours costs seconds: a config
class imports transformers' configuration machinery (and torch), a model class its modeling code
(and ``AutoModelFor*`` their factory). So the registries hold a ``LazyClass`` until first use,
which then puts the class itself in its place.

This is the one module that relies on how transformers (5.16-5.19) uses what its registries
hold: ``CONFIG_MAPPING``'s values are called (``AutoConfig.for_model``) or asked for attributes
(``from_dict``, ``__module__``); an Auto model mapping's values are asked for attributes
(``from_pretrained``, ``_from_config``, ``config_class``, ``__module__``), never type-checked.
tests/roll_models/test_lazy_registration.py loads models through every one of these paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcore_adapter.registry import load_object, split_ref


class LazyClass:
    """Stands for the class ``target`` ("module:Name") in one of transformers' registries: its
    name and module are known without importing it (transformers reads ``__module__`` to tell
    local code from remote code); anything else imports the class, hands it to ``on_load`` (which
    puts it in the registry in place of this stand-in) and is answered by it. ``known`` are
    attributes answered without importing (``config_class``, which ``AutoModel*.register``
    checks)."""

    def __init__(self, target: str, on_load: Callable[[type], None], **known: Any) -> None:
        module, name = split_ref(target)
        self.__module__ = module
        self.__name__ = self.__qualname__ = name
        self.__dict__.update(known)
        self._lazy_target = target
        self._lazy_on_load = on_load
        self._lazy_class: type | None = None

    def load(self) -> type:
        if self._lazy_class is None:
            cls = load_object(self._lazy_target)
            self._lazy_on_load(cls)
            self._lazy_class = cls
        return self._lazy_class

    def __getattr__(self, name: str) -> Any:  # called only for names not set in __init__
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # probes (copy, pickle, inspect) do not import the class
        return getattr(self.load(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<not yet imported: {self._lazy_target}>"


def register_config(model_type: str, target: str, on_load: Callable[[type], None]) -> None:
    """Make ``model_type`` known to ``transformers.AutoConfig`` (for_model, from_pretrained) as
    the config class ``target``, imported on first use."""
    from transformers import CONFIG_MAPPING

    # AutoConfig.register checks issubclass(config, PreTrainedConfig), which needs the class;
    # the mapping's own register (which vLLM uses too) takes the stand-in.
    CONFIG_MAPPING.register(model_type, LazyClass(target, on_load), exist_ok=True)


def lazy_model_class(target: str, auto_name: str, config_class: type) -> LazyClass:
    """A stand-in for the model class ``target`` to register with ``transformers.<auto_name>``
    for ``config_class``; once imported, the class replaces it there."""

    def replace(cls: type) -> None:
        import transformers

        getattr(transformers, auto_name).register(config_class, cls, exist_ok=True)

    return LazyClass(target, replace, config_class=config_class)
