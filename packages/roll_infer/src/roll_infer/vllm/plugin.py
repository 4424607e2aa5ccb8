"""The ``vllm.general_plugins`` entry point: vLLM calls ``register()`` in every process it starts
(the front end, the engine core, each worker), so what it registers exists wherever a model is
built or a weight update arrives.

It registers, idempotently and without importing any model code:
- every roll_models architecture: vLLM's own class where vLLM implements it
  (``NATIVE_ARCHITECTURES``), else ours (``ENGINE_CLASSES``); roll_models' config classes are
  registered with transformers' ``AutoConfig``, so hub checkpoints whose config carries an
  ``auto_map`` load with ``trust_remote_code=False``;
- architectures a user added with ``register_architecture`` (they travel to vLLM's child
  processes in the ``ROLL_INFER_VLLM_MODELS`` environment variable);
- the CPU weight-transfer backend (``roll_shm``) with both of vLLM's transfer factories.
"""

from __future__ import annotations

import logging
import os

from mcore_adapter.registry import find_module_spec

logger = logging.getLogger(__name__)

# roll_models architectures that vLLM implements itself: we use its class.
NATIVE_ARCHITECTURES = frozenset({"InternLM2ForCausalLM"})
# HF architecture -> "module:Class" of our vLLM implementation, for architectures vLLM lacks.
ENGINE_CLASSES: dict[str, str] = {}

ENV_MODELS = "ROLL_INFER_VLLM_MODELS"
SHM_BACKEND = "roll_shm"
_SHM_MODULE = "roll_infer.vllm.shm_transfer"


class RegistrationError(ValueError):
    """A vLLM architecture registration that cannot work, with what to do instead."""


def roll_models_architectures() -> dict[str, str]:
    """HF architecture -> model_type of every implementation roll_models registers."""
    from roll_models import IMPLEMENTATIONS

    return {
        target.rpartition(":")[2]: model_type
        for model_type, (_, classes) in IMPLEMENTATIONS.items()
        for target in classes.values()
    }


def unmapped_architectures() -> list[str]:
    mapped = NATIVE_ARCHITECTURES | set(ENGINE_CLASSES)
    return sorted(set(roll_models_architectures()) - mapped)


def env_entries(variable: str) -> dict[str, str]:
    """``Architecture=module:Class`` entries, separated by ``;``, of an environment variable."""
    entries = {}
    for item in filter(None, (part.strip() for part in os.environ.get(variable, "").split(";"))):
        arch, sep, target = item.partition("=")
        if not sep or target.count(":") != 1:
            raise RegistrationError(
                f"{variable}: expected 'Architecture=module:Class' entries separated by ';', got {item!r}"
            )
        entries[arch.strip()] = target.strip()
    return entries


def check_entry(architecture: object, model_class: object) -> None:
    """Check a registration at the call rather than when an engine first builds the model: a
    non-empty ``architecture``; a ``model_class`` of the form "module:Class" whose module can be
    found and (where its source can be read) binds ``Class`` at module level. The module is
    located without being imported (its parent packages are not imported either), so a model
    module that imports vLLM's model code costs nothing here."""
    check_entry_form(architecture, model_class)
    assert isinstance(model_class, str)
    module, _, name = model_class.partition(":")
    _check_class_exists(model_class, module, name)


def check_entry_form(architecture: object, model_class: object) -> None:
    """The part of ``check_entry`` that looks at the two strings only."""
    if not isinstance(architecture, str) or not architecture.strip():
        raise RegistrationError(f"architecture must be a non-empty string, got {architecture!r}")
    if architecture != architecture.strip() or any(c.isspace() for c in architecture):
        raise RegistrationError(f"architecture must not contain whitespace, got {architecture!r}")
    if not isinstance(model_class, str):
        raise RegistrationError(f"model_class must be a 'module:Class' string, got {model_class!r}")
    if any(c in text for c in "=;" for text in (architecture, model_class)):
        raise RegistrationError(f"'=' and ';' cannot appear in {architecture!r} or {model_class!r}")
    module, _, name = model_class.partition(":")
    if not module or not name or ":" in name:
        raise RegistrationError(f"model_class must be 'module:Class', got {model_class!r}")
    if not all(part.isidentifier() for part in module.split(".")) or not name.isidentifier():
        raise RegistrationError(
            f"model_class must be 'module:Class' with a dotted module path and a class name, got {model_class!r}"
        )


def _module_level_names(source: str) -> set[str] | None:
    """The names a module's source binds at module level, None when it cannot be told statically
    (a star import, a module ``__getattr__``, or source that does not parse)."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    names: set[str] = set()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
            continue  # what their bodies bind is not module level
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.partition(".")[0])
        targets: list = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
            targets = [node.target]
        elif isinstance(node, ast.With | ast.AsyncWith):
            targets = [item.optional_vars for item in node.items]
        for target in filter(None, targets):
            names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        # compound statements at module level (if, try, with, for, while): their bodies bind
        # module-level names too
        for field in ("body", "orelse", "finalbody", "handlers"):
            stack.extend(child for child in getattr(node, field, None) or [] if isinstance(child, ast.AST))
        if isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
        if isinstance(node, ast.Match):
            stack.extend(stmt for case in node.cases for stmt in case.body)
    return names


def _check_class_exists(model_class: str, module: str, name: str) -> None:
    import sys

    loaded = sys.modules.get(module)
    if loaded is not None:
        if not hasattr(loaded, name):
            raise RegistrationError(f"model_class {model_class!r}: module {module} has no attribute {name!r}")
        return
    try:
        spec = find_module_spec(module)
    except (ImportError, ValueError) as e:
        raise RegistrationError(f"model_class {model_class!r}: module {module} cannot be found: {e}") from e
    if spec is None:
        raise RegistrationError(
            f"model_class {model_class!r}: no module named {module!r} on this Python path (vLLM's "
            "processes import it by name: it must be importable there too)"
        )
    origin = spec.origin if spec.has_location else None
    if not origin or not origin.endswith(".py"):
        return  # a namespace package, a compiled or otherwise loaded module: checked when imported
    try:
        with open(origin, encoding="utf-8") as f:
            names = _module_level_names(f.read())
    except (OSError, UnicodeDecodeError):
        return
    if names is not None and name not in names:
        raise RegistrationError(f"model_class {model_class!r}: {origin} defines no {name!r} at module level")


def add_env_entry(variable: str, architecture: str, model_class: str) -> dict[str, str]:
    """Check an entry (``check_entry``) and add it to ``variable``; returns the entries it held
    before."""
    check_entry(architecture, model_class)
    entries = env_entries(variable)
    if entries.get(architecture, model_class) != model_class:
        raise RegistrationError(
            f"{architecture} is already registered as {entries[architecture]}; not replacing it with {model_class}"
        )
    os.environ[variable] = ";".join(f"{a}={t}" for a, t in {**entries, architecture: model_class}.items())
    return entries


def user_architectures() -> dict[str, str]:
    return env_entries(ENV_MODELS)


def register_architecture(architecture: str, model_class: str, overwrite: bool = False) -> None:
    """Register an out-of-tree vLLM model class (``"module:Class"``, imported lazily) for an HF
    ``architectures`` string, in this process and in every vLLM process started after this call
    (the entry is passed on in ``ROLL_INFER_VLLM_MODELS``). Call it before creating the engine.
    Registering the same class again is a no-op; replacing another class, vLLM's own included,
    needs ``overwrite=True``. An empty architecture, a malformed ``model_class``, a module that
    cannot be found or that defines no such class raise ``RegistrationError`` here, not when an
    engine first builds the model (``check_entry``)."""
    from vllm import ModelRegistry

    check_entry(architecture, model_class)
    known = user_architectures()
    if architecture in ModelRegistry.models and architecture not in known and not overwrite:
        raise RegistrationError(
            f"vLLM already implements {architecture}; pass overwrite=True to serve it with {model_class} instead"
        )
    if overwrite:
        os.environ[ENV_MODELS] = ";".join(f"{a}={t}" for a, t in known.items() if a != architecture)
    add_env_entry(ENV_MODELS, architecture, model_class)
    _register_models({architecture: model_class})


def _register_models(classes: dict[str, str]) -> None:
    from vllm import ModelRegistry

    for arch, target in classes.items():
        # vLLM replaces an entry silently; re-registering the same string each time vLLM calls
        # the plugin is harmless, but do not rebuild its lazy wrapper for nothing.
        current = ModelRegistry.models.get(arch)
        if (
            current is not None
            and f"{getattr(current, 'module_name', '')}:{getattr(current, 'class_name', '')}" == target
        ):
            continue
        ModelRegistry.register_model(arch, target)


def _register_transfer_backend() -> None:
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    # The factories raise on a second registration; vLLM calls plugins once per process, but a
    # test (or a user) may call register() again.
    if SHM_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(
            SHM_BACKEND, _SHM_MODULE, "SharedMemoryWeightTransferEngine"
        )
    if SHM_BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(
            SHM_BACKEND, _SHM_MODULE, "SharedMemoryTrainerWeightTransferEngine"
        )


def register() -> None:
    """vLLM's plugin hook. Importing roll_models registers its configs with transformers."""
    import roll_models  # noqa: F401  (registers roll_models' config and model classes)

    for arch in unmapped_architectures():
        # Not raised: vLLM would fail every engine, also for models that are fine.
        logger.error(
            "roll_models implements %s, which roll_infer neither maps to vLLM's own class nor gives an "
            "engine class: vLLM cannot serve it (add it to NATIVE_ARCHITECTURES or ENGINE_CLASSES in %s)",
            arch,
            __name__,
        )
    _register_models({**ENGINE_CLASSES, **user_architectures()})
    _register_transfer_backend()
