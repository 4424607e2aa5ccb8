"""``VirtualModels``: the model chunks of one pipeline rank with virtual pipeline stages, and
``build_chunks``, which builds this rank's chunks of a model class."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from .converter.stream import DEFAULT_BUCKET_BYTES
from .export import export_hf_weights
from .saving import save_pretrained, save_pretrained_as_hf


class VirtualModels(torch.nn.ModuleList):
    """The model chunks of one pipeline rank with virtual pipeline stages, in stage order (the
    list Megatron's interleaved schedule takes), with the checkpoint methods of one model."""

    @property
    def config(self):
        return self[0].config

    def save_pretrained(self, path: str | os.PathLike, force: bool = False) -> None:
        save_pretrained(list(self), path, force)

    def save_pretrained_as_hf(
        self, path: str | os.PathLike, force: bool = False, max_shard_bytes=None
    ) -> None:
        save_pretrained_as_hf(list(self), path, force, max_shard_bytes)

    def export_hf_weights(
        self, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> Iterator[tuple[str, torch.Tensor]]:
        return export_hf_weights(list(self), bucket_bytes)


def build_chunks(cls, config) -> list:
    vpp = config.virtual_pipeline_model_parallel_size
    if vpp:
        return VirtualModels([cls(config, vp_stage=i) for i in range(vpp)])
    return [cls(config)]
