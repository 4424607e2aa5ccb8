"""The public API for getting a model's weights out of mcore_adapter, for weight syncs and
inference engines (roll_infer uses only this, ``mcore_adapter.models.converter.template`` and
the package's top-level names):

- streaming a built model's weights in HF names, a bucket at a time, at any parallel layout
  (``export_hf_buckets``, ``export_hf_weights``), and what such a stream will yield without
  gathering anything (``export_hf_plan``). These import Megatron, on first use;
- the weight-stream contract every producer implements (``WeightStream``: ``metadata()`` and
  ``buckets(bucket_bytes)``; ``TensorMeta``), the one bucket size default
  (``DEFAULT_BUCKET_BYTES``), and the helpers that bucket a plain ``(name, tensor)`` iteration
  (``bucketed``, ``stream_buckets``) and check a stream against its metadata
  (``checked_buckets``);
- staging an output directory all-or-nothing (``staged_output_dir``: it appears only when
  complete) and refusing one that overlaps the checkpoint being read (``check_not_overlapping``);
- the safetensors shard writer (``SafetensorsWriter``, ``DEFAULT_MAX_SHARD_BYTES``);
- expert unfolding: ``fused_experts(model_type)`` maps transformers' fused expert tensors to
  the hub's per-expert names;
- ``file_kind``: what a path that is not a regular file is, in words, for error messages.
"""

from __future__ import annotations

import importlib
from typing import Any

from .models.converter.atomic import check_not_overlapping, staged_output_dir
from .models.converter.fused_experts import FusedExperts
from .models.converter.hf_io import DEFAULT_MAX_SHARD_BYTES, SafetensorsWriter
from .models.converter.stream import (
    DEFAULT_BUCKET_BYTES,
    Bucket,
    TensorInfo,
    TensorMeta,
    WeightStream,
    bucketed,
    checked_buckets,
    stream_buckets,
    tensor_nbytes,
)
from .models.converter.template import get_template, registered_model_types
from .models.converter.untrusted import file_kind

# Names that import Megatron, loaded on first access (``from mcore_adapter.export import ...``
# included) so that this module imports in a process without it, e.g. an inference engine's.
_LAZY = {
    "export_hf_buckets": "mcore_adapter.models.export",
    "export_hf_plan": "mcore_adapter.models.export",
    "export_hf_weights": "mcore_adapter.models.export",
}

__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "DEFAULT_MAX_SHARD_BYTES",
    "Bucket",
    "FusedExperts",
    "SafetensorsWriter",
    "TensorInfo",
    "TensorMeta",
    "WeightStream",
    "bucketed",
    "check_not_overlapping",
    "checked_buckets",
    "file_kind",
    "fused_experts",
    "staged_output_dir",
    "stream_buckets",
    "tensor_nbytes",
    *_LAZY,
]


def fused_experts(model_type: str) -> FusedExperts | None:
    """The fused-expert table of an HF model type (transformers 5 keeps a MoE layer's experts
    fused in memory; ``unfold`` names each fused tensor's per-expert parts as the hub's
    checkpoints do); ``None`` where the type has no template or no fused experts."""
    if model_type not in registered_model_types():
        return None
    return get_template(model_type).fused_experts() or None


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import platform

        platform.quiet_cpu_noise()  # before megatron.core's import-time warnings
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mcore_adapter.export' has no attribute {name!r}")
