"""What every weight-sync path shares: its error and its measurement."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mcore_adapter.export import TensorMeta

__all__ = ["TensorMeta", "TransferStats", "WeightSyncError", "consumer_dtypes"]


class WeightSyncError(RuntimeError):
    """A weight sync that did not complete, naming the tensors at fault. Sinks check the whole
    plan first and write nothing; an engine is left on its previous weight version."""


@dataclass
class TransferStats:
    tensors: int = 0
    bytes: int = 0
    buckets: int = 0
    seconds: float = 0.0

    def add(self, tensor: torch.Tensor) -> None:
        self.tensors += 1
        self.bytes += tensor.numel() * tensor.element_size()

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds if self.seconds else 0.0


def consumer_dtypes(source: Any, dtypes: torch.dtype | Mapping[str, torch.dtype] | None):
    """A context manager telling ``source``, for the pass inside it, the dtype(s) the consumer
    holds its weights in (one for all, or one per name), if the source can cast to them
    (``McaWeights.sending_to``); other sources send what they send."""
    offer = getattr(source, "sending_to", None)
    return offer(dtypes) if callable(offer) and dtypes is not None else contextlib.nullcontext()
