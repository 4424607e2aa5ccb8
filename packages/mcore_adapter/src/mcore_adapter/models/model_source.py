"""``ModelSource``: a built model as a conversion source, like the converter's ``HFSource`` and
``McaTorchSource`` (see ``converter.convert``): its canonical weights, gathered from every
rank, for ``write_hf`` and ``save_mca_torch``."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .chunks import dist_converter
from .converter.stream import DEFAULT_BUCKET_BYTES, Bucket, TensorMeta
from .converter.template import get_template
from .export import canonical_plan, gather_canonical


class ModelSource:
    """A built model's canonical weights, gathered from every rank: a ``WeightStream``.
    Collective when more than one rank holds the model."""

    def __init__(self, models: list):
        self.models = models
        config = models[0].config
        self.template = get_template(config.hf_model_type)
        self.mca_kwargs = config.to_mca_kwargs()
        self.hf_config = config.hf_config
        self.hf_weight_dtype = config.hf_weight_dtype
        self.hf_expert_layout = config.hf_expert_layout
        self.plan = canonical_plan(models, dist_converter(config))

    def metadata(self) -> list[TensorMeta]:
        return [TensorMeta(name, dtype, tuple(shape)) for _, name, shape, dtype in self.plan]

    def buckets(self, bucket_bytes: int | None = None) -> Iterator[Bucket]:
        return gather_canonical(self.models, DEFAULT_BUCKET_BYTES if bucket_bytes is None else bucket_bytes)

    def weights(self, meta: bool = False):
        if meta:
            for _, name, shape, dtype in self.plan:
                yield name, torch.empty(shape, dtype=dtype, device="meta")
            return
        for bucket in self.buckets():
            yield from bucket
