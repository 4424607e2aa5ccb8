"""``McaWeightSource``: an mcore_adapter model, at any TP / PP / VPP / EP layout, as a vLLM
``WeightSource`` in HF names.

It streams ``export_hf_weights``: q/k/v and gate/up come unfused (the engine's loader fuses them
as it does for a checkpoint), experts one at a time, a bucket of gathered weights at a time, and
tied embeddings once (the HF checkpoint has no separate ``lm_head``). ``metadata()`` is the same
plan computed on meta tensors, so both channels agree by construction and the engines' own
checks confirm it.

Two ways to use it, as vLLM's backends need:
- ``all_stages=True`` (default): every rank materializes the whole model, a pipeline stage's
  weights being broadcast to the other stages; rank 0 sends. This is what the sender-only
  backends (``nccl``, ``ipc``, ``roll_shm``) expect.
- ``all_stages=False``: a rank yields only its pipeline stage's weights and ``None`` for the
  others, and ``held_names()`` says which it holds, for backends that pull from every rank.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

from mcore_adapter.models import model_io
from mcore_adapter.models.model_io import DEFAULT_BUCKET_BYTES


def _models(model: Any) -> list:
    if isinstance(model, list | tuple | torch.nn.ModuleList):
        return list(model)
    return [model]


class McaWeightSource(WeightSource):
    def __init__(
        self,
        model: Any,
        *,
        dtype: torch.dtype | None = None,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        all_stages: bool = True,
    ) -> None:
        """``model``: an mcore_adapter model or its virtual-pipeline chunks. ``dtype``: send
        floating weights in this dtype (the engine's); by default the dtype of the HF
        checkpoint the model came from, which is what an engine on that checkpoint runs in.
        ``bucket_bytes``: how much is gathered at a time."""
        self.models = _models(model)
        self.dtype = dtype or self.models[0].config.torch_hf_weight_dtype
        self.bucket_bytes = bucket_bytes
        self.all_stages = all_stages
        self._plan: list[tuple[int, str, torch.Size, torch.dtype]] | None = None

    def _cast(self, dtype: torch.dtype) -> torch.dtype:
        return self.dtype if self.dtype is not None and dtype.is_floating_point else dtype

    def plan(self) -> list[tuple[int, str, torch.Size, torch.dtype]]:
        if self._plan is None:  # collective under pipeline parallelism; the model's shapes are fixed
            self._plan = model_io.export_hf_plan(self.models)
        return self._plan

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, self._cast(dtype), tuple(shape)) for _, name, shape, dtype in self.plan()]

    def held_names(self) -> Collection[str] | None:
        if self.all_stages:
            return None
        from megatron.core import parallel_state

        stage = parallel_state.get_pipeline_model_parallel_rank()
        return {name for owner, name, _, _ in self.plan() if owner == stage}

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor | None]]:
        self.plan()  # every rank joins the plan's collective before the first gather
        # vLLM's contract for split producers: exactly this rank's groups (a layer, the
        # embedding, the final block), ``None`` for the names of a group it does not hold.
        wanted = None if self.all_stages else {name for group in self.groups() for name in group}
        for bucket in model_io.export_hf_buckets(self.models, self.bucket_bytes, self.all_stages):
            for name, tensor in bucket:
                if wanted is not None and name not in wanted:
                    continue
                yield name, None if tensor.is_meta else tensor.to(self._cast(tensor.dtype))
