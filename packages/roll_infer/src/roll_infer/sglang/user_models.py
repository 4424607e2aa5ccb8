"""The SGLang classes named in ``ROLL_INFER_SGLANG_MODELS`` (see ``register_architecture``)."""

from __future__ import annotations

from mcore_adapter.registry import load_object
from roll_infer.sglang import user_architectures

EntryClass = [load_object(target) for target in user_architectures().values()]
