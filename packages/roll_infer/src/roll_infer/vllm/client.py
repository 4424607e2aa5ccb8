"""``LLMWeightSyncClient``: vLLM's trainer-side weight-sync protocol (``VLLMWeightSyncClient``)
over an offline ``vllm.LLM`` in this process. vLLM ships HTTP and Ray clients; the offline
``LLM`` takes its requests wrapped (``{"init_info": ...}``), which is all this adapts."""

from __future__ import annotations

from typing import Any


class LLMWeightSyncClient:
    def __init__(self, llm: Any) -> None:
        self.llm = llm

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
