"""An SGLang external model package: ``SGLANG_EXTERNAL_MODEL_PACKAGE=roll_infer.sglang``.

SGLang imports this package, then walks its modules and registers each module-level
``EntryClass`` under the class's ``__name__`` (which must be the HF ``architectures`` string).

- Importing the package registers roll_models' config and model classes with transformers, so a
  hub checkpoint whose config carries an ``auto_map`` (InternLM2) loads in SGLang with
  ``trust_remote_code=False``; SGLang's own classes serve the architectures it implements
  (``NATIVE_ARCHITECTURES``).
- ``user_models`` registers the classes named in ``ROLL_INFER_SGLANG_MODELS``
  (``register_architecture`` sets it for SGLang processes started afterwards).

SGLang only logs a module it cannot import; ``roll_infer.sglang.check_registry`` tells whether
every class really resolved.
"""

from __future__ import annotations

import os

import roll_models  # noqa: F401  (registers roll_models' configs and models with transformers)
from roll_infer.registration import RegistrationError, add_env_entry, check_entry_form, env_entries

# roll_models architectures that SGLang implements itself.
NATIVE_ARCHITECTURES = frozenset({"InternLM2ForCausalLM"})
# HF architecture -> "module:Class" of our SGLang implementation, for architectures SGLang lacks;
# each module must set EntryClass (none is needed yet).
ENGINE_CLASSES: dict[str, str] = {}
ENV_MODELS = "ROLL_INFER_SGLANG_MODELS"


def user_architectures() -> dict[str, str]:
    return env_entries(ENV_MODELS)


def register_architecture(architecture: str, model_class: str) -> None:
    """Have SGLang processes started after this call (with
    ``SGLANG_EXTERNAL_MODEL_PACKAGE=roll_infer.sglang``) serve ``architecture`` with
    ``model_class`` ("module:Class"; the class's name must be the architecture). The entry is
    checked here (``roll_infer.registration.check_entry``): the module must be findable and
    define the class."""
    check_entry_form(architecture, model_class)
    name = model_class.partition(":")[2]
    if name != architecture:
        raise RegistrationError(
            f"SGLang registers a class under its own name: {name!r} would not serve {architecture!r}; "
            "name the class after the architecture"
        )
    add_env_entry(ENV_MODELS, architecture, model_class)
    os.environ.setdefault("SGLANG_EXTERNAL_MODEL_PACKAGE", __name__)


def check_registry() -> dict[str, str]:
    """Import SGLang's registry (as SGLang does, with this package as its external package) and
    return architecture -> "module:Class" of what it resolved for our architectures, raising
    with the reason for any that did not resolve (SGLang itself only logs import errors)."""
    import importlib

    from sglang.srt.models.registry import ModelRegistry

    expected = {**ENGINE_CLASSES, **user_architectures()}
    resolved = {}
    for arch, target in expected.items():
        cls = ModelRegistry.models.get(arch)
        if cls is None:
            module, _, _ = target.partition(":")
            importlib.import_module(module)  # raises the error SGLang logged and went on from
            raise LookupError(f"{arch}: {module} imports, but sets no EntryClass named {arch}")
        resolved[arch] = f"{cls.__module__}:{cls.__qualname__}"
    return resolved
