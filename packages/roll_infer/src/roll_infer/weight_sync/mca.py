"""``McaWeights``: an mcore_adapter model, at any TP / PP / VPP / EP layout, as a stream of HF
weights with vLLM's two channels (``metadata()`` and iteration), without importing vLLM, and a
``mcore_adapter.export.WeightStream`` (``metadata()`` and ``buckets(bucket_bytes)``). It feeds
the sinks that need no engine (``sync_to_hf_model``, ``sync_to_directory``);
``McaWeightSource`` adds vLLM's ``WeightSource`` base to it for vLLM's transfer backends.

It streams ``export_hf_buckets`` (each of its buckets is one of ``buckets()``): q/k/v and
gate/up come unfused (an engine's loader fuses them as it does for a checkpoint), experts one at
a time, a bucket of gathered weights at a time, and tied embeddings once (the HF checkpoint has
no separate ``lm_head``). ``metadata()`` is the same plan computed on meta tensors, so both
channels agree by construction.

The dtype of each floating tensor on the wire follows one rule (``wire_dtype``): the ``dtype=``
the source was built with; else the dtype the consumer holds that tensor in, which a consumer
that knows it reports for its pass (the ``roll_shm`` trainer the engine's, ``sync_to_hf_model``
the HF model's); else the dtype of the HF checkpoint the model came from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import torch

from mcore_adapter import export
from mcore_adapter.export import DEFAULT_BUCKET_BYTES

from .common import TensorMeta

ConsumerDtypes = torch.dtype | Mapping[str, torch.dtype] | None


def _models(model: Any) -> list:
    if isinstance(model, list | tuple | torch.nn.ModuleList):
        return list(model)
    return [model]


class McaWeights:
    meta_cls: type = TensorMeta  # McaWeightSource: vLLM's ParamMeta
    all_stages = True  # every rank gathers every pipeline stage (McaWeightSource can say otherwise)

    def __init__(
        self, model: Any, *, dtype: torch.dtype | None = None, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> None:
        """``model``: an mcore_adapter model or its virtual-pipeline chunks. ``dtype``: send
        floating weights in this dtype whatever the consumer holds (a consumer that holds another
        refuses them, naming the tensor); by default the consumer's (see the module docstring).
        ``bucket_bytes``: how much is gathered at a time, unless ``buckets()`` is given another."""
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(
                f"dtype must be a floating torch.dtype (e.g. torch.bfloat16) or None, got {dtype!r}"
            )
        self.models = _models(model)
        self.dtype = dtype
        self.bucket_bytes = bucket_bytes
        self._plan: list[tuple[int, str, torch.Size, torch.dtype]] | None = None
        self._consumer: ConsumerDtypes = None

    @contextlib.contextmanager
    def sending_to(self, dtypes: ConsumerDtypes) -> Iterator[None]:
        """For the pass inside the block: the consumer holds its weights in ``dtypes`` (one dtype
        for all, or one per HF name)."""
        previous, self._consumer = self._consumer, dtypes
        try:
            yield
        finally:
            self._consumer = previous

    def wire_dtype(self, name: str, dtype: torch.dtype) -> torch.dtype:
        """The dtype ``name``, exported as ``dtype``, is sent in: the module docstring's rule."""
        if not dtype.is_floating_point:
            return dtype
        if self.dtype is not None:
            return self.dtype
        consumer = self._consumer.get(name) if isinstance(self._consumer, Mapping) else self._consumer
        if consumer is not None and consumer.is_floating_point:
            return consumer
        return self.models[0].config.torch_hf_weight_dtype

    def plan(self) -> list[tuple[int, str, torch.Size, torch.dtype]]:
        if self._plan is None:  # collective under pipeline parallelism; the model's shapes are fixed
            self._plan = export.export_hf_plan(self.models)
        return self._plan

    def metadata(self) -> list:
        return [
            self.meta_cls(name, self.wire_dtype(name, dtype), tuple(shape))
            for _, name, shape, dtype in self.plan()
        ]

    def _wanted(self) -> Collection[str] | None:
        """The names this rank yields tensors for; None for all (every stage gathered)."""
        return None

    def _exported(self, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """The export's buckets, of the names this rank yields, not yet in the wire dtype."""
        self.plan()  # every rank joins the plan's collective before the first gather
        wanted = self._wanted()
        for bucket in export.export_hf_buckets(self.models, bucket_bytes, self.all_stages):
            yield [(name, t) for name, t in bucket if wanted is None or name in wanted]

    def _wire(self, name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        return None if tensor.is_meta else tensor.to(self.wire_dtype(name, tensor.dtype))

    def buckets(self, bucket_bytes: int | None = None) -> Iterator[list[tuple[str, torch.Tensor | None]]]:
        """The stream a bucket at a time (``bucket_bytes``, by default the one this source was
        built with, gathered at once): each tensor in its wire dtype, ``None`` for one this rank
        does not hold (``all_stages=False``)."""
        for bucket in self._exported(self.bucket_bytes if bucket_bytes is None else bucket_bytes):
            if bucket:
                yield [(name, self._wire(name, tensor)) for name, tensor in bucket]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor | None]]:
        # Cast one tensor at a time: a consumer that copies each away holds no bucket of casts.
        for bucket in self._exported(self.bucket_bytes):
            for name, tensor in bucket:
                yield name, self._wire(name, tensor)
