"""roll_infer's model streams are ``mcore_adapter.export.WeightStream``s: ``McaWeights`` (and
``McaWeightSource``, vLLM's ``WeightSource`` over it) announce in ``metadata()`` exactly what
``buckets()`` and plain iteration yield, in the wire dtype, and a bucket is one of the model's
export buckets."""

from __future__ import annotations

import pytest
import torch

from mcore_adapter.export import WeightStream, checked_buckets, stream_buckets


@pytest.fixture(scope="module")
def model(megatron, tiny_checkpoint):
    from mcore_adapter import AutoModel

    return AutoModel.from_pretrained(str(tiny_checkpoint("qwen3")))


def _check(source, bucket_bytes: int) -> None:
    from mcore_adapter.export import export_hf_buckets

    assert isinstance(source, WeightStream)
    meta = source.metadata()
    buckets = list(checked_buckets(source.buckets(bucket_bytes), meta))  # agrees with metadata()
    # A bucket is one of the model's export buckets (a gathered canonical bucket in HF names).
    exported = list(export_hf_buckets(source.models, bucket_bytes))
    assert len(buckets) > 1
    assert [[n for n, _ in b] for b in buckets] == [[n for n, _ in b] for b in exported]
    # Plain iteration (vLLM's channel) is the same stream, and so is what a consumer buckets.
    flat = list(source)
    assert [(n, t.dtype, tuple(t.shape)) for n, t in flat] == [
        (m.name, m.dtype, tuple(m.shape)) for m in meta
    ]
    for (name, tensor), (_, expected) in zip(flat, (p for b in buckets for p in b), strict=True):
        torch.testing.assert_close(tensor, expected, rtol=0, atol=0, msg=name)
    assert [n for b in stream_buckets(source, bucket_bytes) for n, _ in b] == [m.name for m in meta]


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["checkpoint-dtype", "bf16"])
def test_mca_weights_is_a_weight_stream(model, dtype):
    from roll_infer.weight_sync import McaWeights

    _check(McaWeights(model, dtype=dtype), 4096)


@pytest.mark.vllm
def test_mca_weight_source_is_a_weight_stream(model):
    from roll_infer.weight_sync import McaWeightSource

    _check(McaWeightSource(model), 4096)
