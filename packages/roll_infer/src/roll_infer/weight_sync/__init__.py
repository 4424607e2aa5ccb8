"""Megatron -> inference weight sync (refit): ``McaWeightSource`` streams an mcore_adapter model
in HF names; vLLM's weight-transfer API carries it into a running engine (its ``nccl``/``ipc``
backends on GPU, ``roll_shm`` on CPU), and ``sync_to_hf_model`` / ``sync_to_directory`` write it
into an HF model in memory or a safetensors directory."""

from .common import TransferStats, WeightSyncError
from .sinks import sync_to_directory, sync_to_hf_model

__all__ = ["McaWeightSource", "TransferStats", "WeightSyncError", "sync_to_directory", "sync_to_hf_model"]


def __getattr__(name: str):
    if name == "McaWeightSource":  # it subclasses vLLM's WeightSource: import vLLM only when asked
        from .source import McaWeightSource

        return McaWeightSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
