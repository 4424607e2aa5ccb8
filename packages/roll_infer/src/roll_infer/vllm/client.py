"""``LLMWeightSyncClient``: vLLM's trainer-side weight-sync protocol (``VLLMWeightSyncClient``)
over an offline ``vllm.LLM`` in this process. vLLM ships HTTP and Ray clients; the offline
``LLM`` takes its requests wrapped (``{"init_info": ...}``), which is all this adapts, and it
can tell the trainer the engine's model dtype, which vLLM's protocol does not carry."""

from __future__ import annotations

from typing import Any

import torch


class LLMWeightSyncClient:
    def __init__(self, llm: Any) -> None:
        self.llm = llm

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype the engine holds its model in (``LLM(dtype=...)``; vLLM's default "auto"
        runs an fp32 checkpoint in bf16): the ``roll_shm`` trainer has its source send in it."""
        return self.llm.llm_engine.model_config.dtype

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def shutdown_weight_transfer_engine(self) -> None:
        self.llm.shutdown_weight_transfer_engine()

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)
