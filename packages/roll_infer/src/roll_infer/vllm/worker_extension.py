"""A vLLM worker extension (``LLM(..., worker_extension_cls="roll_infer.vllm.worker_extension.
RollWorkerExtension")``): what a trainer may ask each engine worker through
``collective_rpc`` besides vLLM's own weight-update methods. Its names carry a ``roll_infer_``
prefix, as vLLM refuses an extension that redefines a worker attribute."""

from __future__ import annotations

import os
from typing import Any


class RollWorkerExtension:
    def roll_infer_report(self) -> dict[str, Any]:
        """This worker's process, what it has registered with vLLM, and the state of the last
        weight update: ``incomplete`` names why it failed, ``None`` once one has succeeded."""
        from vllm import ModelRegistry
        from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

        engine = getattr(self, "weight_transfer_engine", None)
        return {
            "pid": os.getpid(),
            "architectures": sorted(ModelRegistry.get_supported_archs()),
            "transfer_backends": sorted(WeightTransferEngineFactory._registry),
            "weight_transfer_engine": type(engine).__name__ if engine is not None else None,
            "incomplete": getattr(engine, "incomplete", None),
        }
