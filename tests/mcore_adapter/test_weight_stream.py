"""The weight-stream contract (``converter.stream.WeightStream``): every source of the converter
(an HF checkpoint, an MCA ``torch`` checkpoint, a built model) implements it, its ``metadata()``
announces exactly what ``buckets()`` yields, in order, and its buckets follow the one rule."""

from __future__ import annotations

import pytest
import torch

from mcore_adapter.models.converter.convert import HFSource, McaTorchSource, convert_hf_to_mca
from mcore_adapter.models.converter.layout import ParallelLayout
from mcore_adapter.models.converter.stream import (
    DEFAULT_BUCKET_BYTES,
    TensorMeta,
    WeightStream,
    bucketed,
    checked_buckets,
    tensor_nbytes,
)


def _pairs(*sizes: int) -> list[tuple[str, torch.Tensor]]:
    return [(f"w{i}", torch.zeros(n, dtype=torch.uint8)) for i, n in enumerate(sizes)]


def test_a_bucket_closes_once_it_reaches_the_size():
    buckets = list(bucketed(_pairs(3, 3, 5, 1, 10, 2), bucket_bytes=6))
    assert [[name for name, _ in bucket] for bucket in buckets] == [
        ["w0", "w1"],
        ["w2", "w3"],
        ["w4"],
        ["w5"],
    ]
    assert list(bucketed([], bucket_bytes=6)) == []
    assert DEFAULT_BUCKET_BYTES == 256 * 1024**2


@pytest.mark.parametrize(
    "stream, message",
    [
        (_pairs(1, 2), "announced 'w1' torch.uint8 (3,), got 'w1' torch.uint8 (2,)"),
        (_pairs(1, 3, 4), "more tensors than its metadata() announced (2); the first extra is 'w2'"),
        (_pairs(1), "yielded 1 tensors, its metadata() announced 2"),
    ],
    ids=["wrong-shape", "extra", "missing"],
)
def test_checked_buckets_names_the_first_disagreement(stream, message):
    meta = [TensorMeta(name, t.dtype, tuple(t.shape)) for name, t in _pairs(1, 3)]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(checked_buckets(bucketed(stream, 1), meta))


def _check_stream(source, bucket_bytes: int) -> list[tuple[str, torch.Tensor]]:
    """``source`` is a WeightStream whose metadata agrees with its buckets, which follow
    ``bucketed``'s rule; returns the stream's pairs."""
    assert isinstance(source, WeightStream)
    meta = source.metadata()
    buckets = list(checked_buckets(source.buckets(bucket_bytes), meta))
    assert len(buckets) > 1
    for bucket in buckets[:-1]:  # every bucket but the last reached the size with its last tensor
        sizes = [tensor_nbytes(t) for _, t in bucket]
        assert sum(sizes) >= bucket_bytes > sum(sizes[:-1])
    return [(name, tensor.clone()) for bucket in buckets for name, tensor in bucket]


@pytest.fixture(scope="module")
def mca_dir(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "mca"
    convert_hf_to_mca(tiny_checkpoint("qwen3"), path, ParallelLayout(tp=2), progress=False)
    return path


def test_the_converter_sources_are_weight_streams(tiny_checkpoint, mca_dir):
    hf = HFSource(tiny_checkpoint("qwen3"))
    from_hf = _check_stream(hf, 4096)
    mca = McaTorchSource(mca_dir)
    from_mca = _check_stream(mca, 4096)
    # The same canonical weights through both checkpoints, whatever the order each reads them in.
    assert dict(from_hf).keys() == dict(from_mca).keys()
    for name, tensor in from_mca:
        torch.testing.assert_close(tensor, dict(from_hf)[name], rtol=0, atol=0)
    # The weights() channel the converter uses is the same stream.
    assert [name for name, _ in hf.weights()] == [name for name, _ in from_hf]


def test_a_built_model_is_a_weight_stream(megatron, tiny_checkpoint):
    from mcore_adapter import AutoModel
    from mcore_adapter.models.model_source import ModelSource

    hf_dir = tiny_checkpoint("qwen3")
    source = ModelSource([AutoModel.from_pretrained(str(hf_dir))])
    pairs = _check_stream(source, 4096)
    expected = dict(HFSource(hf_dir).weights())
    assert dict(pairs).keys() == expected.keys()
    for name, tensor in pairs:
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
    assert [name for name, _ in source.weights(meta=True)] == [m.name for m in source.metadata()]
