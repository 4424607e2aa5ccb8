"""What every weight-sync path shares: its error and its measurement."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
