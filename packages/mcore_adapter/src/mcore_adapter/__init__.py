"""Hugging Face <-> Megatron-Core conversion through per-model templates.

Heavy names (anything that imports megatron.core) are loaded on first access, so that the
offline converter and the CLI start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AutoConfig": "mcore_adapter.models.auto",
    "AutoModel": "mcore_adapter.models.auto",
    "McaModelConfig": "mcore_adapter.models.model_config",
    "McaGPTModel": "mcore_adapter.models.model",
    "initialize_model_parallel": "mcore_adapter.parallel",
    "ParallelLayout": "mcore_adapter.models.converter.layout",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import platform

        platform.quiet_cpu_noise()  # before megatron.core's import-time warnings
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mcore_adapter' has no attribute {name!r}")
