"""The SGLang classes named in ``ROLL_INFER_SGLANG_MODELS`` (see ``register_architecture``)."""

from __future__ import annotations

import importlib

from roll_infer.sglang import user_architectures


def _load(target: str) -> type:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


EntryClass = [_load(target) for target in user_architectures().values()]
