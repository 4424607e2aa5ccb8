"""``McaWeightSource``: ``McaWeights`` as a vLLM ``WeightSource``, for vLLM's weight-transfer
backends (``nccl``/``ipc`` on GPU, roll_infer's ``roll_shm`` on CPU). This module imports vLLM.

Two ways to use it, as vLLM's backends need:
- ``all_stages=True`` (default): every rank materializes the whole model, a pipeline stage's
  weights being broadcast to the other stages; rank 0 sends. This is what the sender-only
  backends (``nccl``, ``ipc``, ``roll_shm``) expect.
- ``all_stages=False``: a rank yields only its pipeline stage's weights and ``None`` for the
  others, and ``held_names()`` says which it holds, for backends that pull from every rank.

Floating weights go in the engine's dtype when the backend can learn it (``roll_shm`` through
``LLMWeightSyncClient``); vLLM's own backends do not ask, so with them pass ``dtype=`` where the
engine's differs from the checkpoint's.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

from mcore_adapter.export import DEFAULT_BUCKET_BYTES

from .mca import McaWeights


class McaWeightSource(McaWeights, WeightSource):
    meta_cls = ParamMeta

    def __init__(
        self,
        model: Any,
        *,
        dtype: torch.dtype | None = None,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        all_stages: bool = True,
    ) -> None:
        """``McaWeights``' arguments, and ``all_stages`` (see the module docstring)."""
        super().__init__(model, dtype=dtype, bucket_bytes=bucket_bytes)
        self.all_stages = all_stages

    def held_names(self) -> Collection[str] | None:
        if self.all_stages:
            return None
        from megatron.core import parallel_state

        stage = parallel_state.get_pipeline_model_parallel_rank()
        return {name for owner, name, _, _ in self.plan() if owner == stage}

    def _wanted(self) -> Collection[str] | None:
        # vLLM's contract for split producers: exactly this rank's groups (a layer, the
        # embedding, the final block), ``None`` for the names of a group it does not hold.
        return None if self.all_stages else {name for group in self.groups() for name in group}
