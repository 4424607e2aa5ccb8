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

from roll_infer.registration import RegistrationError, add_env_entry, check_entry, env_entries

logger = logging.getLogger(__name__)

# roll_models architectures that vLLM implements itself: we use its class.
NATIVE_ARCHITECTURES = frozenset({"InternLM2ForCausalLM"})
# HF architecture -> "module:Class" of our vLLM implementation, for architectures vLLM lacks.
ENGINE_CLASSES: dict[str, str] = {}

ENV_MODELS = "ROLL_INFER_VLLM_MODELS"
SHM_BACKEND = "roll_shm"
_SHM_MODULE = "roll_infer.vllm.shm_transfer"


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


def register_transfer_backend() -> None:
    """Make ``roll_shm`` known to vLLM's engine and trainer factories (idempotent)."""
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
    register_transfer_backend()
