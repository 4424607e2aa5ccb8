"""The weight-stream contract: one protocol that every producer of named weights implements, so
that one consumer serves them all.

A stream has two channels that agree element for element:

- ``metadata()``: what will come, in order (name, dtype, shape of every tensor), without reading
  or gathering a weight;
- ``buckets(bucket_bytes)``: the tensors themselves, a list of ``(name, tensor)`` pairs at a
  time, each list holding about ``bucket_bytes`` (``bucketed`` says exactly how much).

The converter's sources (an HF checkpoint, an MCA ``torch`` checkpoint, a built model) stream
canonical Megatron weights; roll_infer's ``McaWeights`` streams a built model in HF names. A
bucket is the unit a producer gathers and a consumer moves at once (a weight sync sends one
bucket per engine update), so there is one bucket size, chosen once, with one default.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

# The default bucket: what a producer gathers, and a consumer moves, at once.
DEFAULT_BUCKET_BYTES = 256 * 1024**2

Bucket = list[tuple[str, torch.Tensor]]


class TensorInfo(Protocol):
    """One tensor a stream announces (``TensorMeta``, or vLLM's ``ParamMeta``)."""

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class TensorMeta:
    """One tensor a stream will yield: what vLLM's ``ParamMeta`` holds, without vLLM."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


@runtime_checkable
class WeightStream(Protocol):
    """A producer of named weights: ``metadata()`` announces every tensor, ``buckets()`` yields
    them, in the same order, with the same names, dtypes and shapes. ``bucket_bytes=None`` is the
    stream's own bucket size (``DEFAULT_BUCKET_BYTES`` unless it was built with another)."""

    def metadata(self) -> Sequence[TensorInfo]: ...

    def buckets(self, bucket_bytes: int | None = None) -> Iterator[Bucket]: ...


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def bucketed(
    pairs: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[Bucket]:
    """``pairs`` in buckets: a bucket closes once it holds ``bucket_bytes`` or more, so it holds at
    least one tensor and overshoots by less than its last tensor."""
    bucket: Bucket = []
    size = 0
    for name, tensor in pairs:
        bucket.append((name, tensor))
        size += tensor_nbytes(tensor)
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def stream_buckets(
    source: WeightStream | Iterable[tuple[str, torch.Tensor]], bucket_bytes: int | None = None
) -> Iterator[Bucket]:
    """The buckets of any weight source: a ``WeightStream``'s own, else its ``(name, tensor)``
    iteration in buckets (``bucketed``), e.g. for a vLLM ``WeightSource`` of another producer."""
    if isinstance(source, WeightStream):
        return source.buckets(bucket_bytes)
    return bucketed(source, DEFAULT_BUCKET_BYTES if bucket_bytes is None else bucket_bytes)


def checked_buckets(buckets: Iterable[Bucket], metadata: Sequence[TensorInfo]) -> Iterator[Bucket]:
    """``buckets``, each checked before it is yielded against what ``metadata`` announced at its
    place (name, dtype, shape, and the count at the end); a disagreement raises ``ValueError``
    naming the first tensor at fault, as a consumer that sized its buffers from the metadata would
    otherwise misread the stream."""
    sent = 0
    for bucket in buckets:
        for name, tensor in bucket:
            if sent >= len(metadata):
                raise ValueError(
                    f"the stream yielded more tensors than its metadata() announced ({len(metadata)}); "
                    f"the first extra is {name!r}"
                )
            expected = metadata[sent]
            if (
                name != expected.name
                or tensor.dtype != expected.dtype
                or tuple(tensor.shape) != tuple(expected.shape)
            ):
                raise ValueError(
                    f"the stream's metadata() disagrees with its iteration at index {sent}: announced "
                    f"{expected.name!r} {expected.dtype} {tuple(expected.shape)}, got {name!r} "
                    f"{tensor.dtype} {tuple(tensor.shape)}"
                )
            sent += 1
        yield bucket
    if sent != len(metadata):
        raise ValueError(f"the stream yielded {sent} tensors, its metadata() announced {len(metadata)}")
