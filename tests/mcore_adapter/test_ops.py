"""ConverOps: exact inverses, Megatron's QKV layout, and errors when an op is built wrong."""

from types import SimpleNamespace

import pytest
import torch

from mcore_adapter.models.converter.template import (
    ConcatConverOp,
    CopyConverOp,
    DropConverOp,
    QKVBiasConverOp,
    QKVConverOp,
    RenameConverOp,
    StackConverOp,
)

CFG = SimpleNamespace(num_attention_heads=4, num_query_groups=2, kv_channels=3, hidden_size=5)


def roundtrip(op, tensors):
    op.bind(CFG)
    fused = op.convert(tensors, to_mca=True)
    back = op.convert(fused, to_mca=False)
    assert len(back) == len(tensors)
    for x, y in zip(tensors, back, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)
    return fused


def test_rename_and_stack_are_exact_inverses():
    w = torch.randn(6, 5)
    assert roundtrip(RenameConverOp("a.weight", "b.weight"), [w])[0] is w
    gate, up = torch.randn(6, 5), torch.randn(6, 5)
    (fc1,) = roundtrip(StackConverOp([".gate.weight", ".up.weight"], ".fc1.weight", dim=0), [gate, up])
    assert torch.equal(fc1, torch.cat([gate, up]))


def test_qkv_matches_megatron_per_group_layout():
    nh, ng, d, h = CFG.num_attention_heads, CFG.num_query_groups, CFG.kv_channels, CFG.hidden_size
    q, k, v = torch.randn(nh * d, h), torch.randn(ng * d, h), torch.randn(ng * d, h)
    (qkv,) = roundtrip(QKVConverOp([".q.weight", ".k.weight", ".v.weight"], ".qkv.weight"), [q, k, v])
    # Megatron: for each group g, its nh/ng query heads, then key g, then value g.
    per_group = nh // ng
    expected = []
    for g in range(ng):
        expected += [q[(g * per_group + i) * d : (g * per_group + i + 1) * d] for i in range(per_group)]
        expected += [k[g * d : (g + 1) * d], v[g * d : (g + 1) * d]]
    assert torch.equal(qkv, torch.cat(expected))


def test_qkv_bias_grouped_like_the_weight():
    nh, ng, d = CFG.num_attention_heads, CFG.num_query_groups, CFG.kv_channels
    q, k, v = torch.randn(nh * d), torch.randn(ng * d), torch.randn(ng * d)
    (bias,) = roundtrip(QKVBiasConverOp([".q.bias", ".k.bias", ".v.bias"], ".qkv.bias"), [q, k, v])
    weight_op = QKVConverOp([".q.w", ".k.w", ".v.w"], ".qkv.w")
    weight_op.bind(CFG)
    (as_weight,) = weight_op.convert([q[:, None], k[:, None], v[:, None]], to_mca=True)
    assert torch.equal(bias, as_weight[:, 0])


def test_qkv_rejects_shapes_that_do_not_match_the_config():
    op = QKVConverOp([".q", ".k", ".v"], ".qkv")
    op.bind(CFG)
    with pytest.raises(ValueError, match=r"\.k: expected 6 rows"):
        op.convert([torch.randn(12, 5), torch.randn(12, 5), torch.randn(6, 5)], to_mca=True)


def test_concat_with_config_sizes_and_copy():
    a, b = torch.randn(4, 2), torch.randn(3, 2)
    roundtrip(ConcatConverOp(["a", "b"], "ab", dim=0, sizes=["num_attention_heads", 3]), [a, b])
    op = CopyConverOp("shared.weight", ["x.weight", "y.weight"])
    op.bind(CFG)
    x, y = op.convert([a], to_mca=True)
    assert x is a and y is a
    assert op.convert([a, a.clone()], to_mca=False)[0] is a
    with pytest.raises(ValueError, match="differs"):
        op.convert([a, a + 1], to_mca=False)


def test_drop_produces_nothing():
    assert DropConverOp(hf_names=".rotary.inv_freq").convert([torch.ones(3)], to_mca=True) == []


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RenameConverOp(["a", "b"], "c"), "takes 1 hf_names"),
        (lambda: QKVConverOp([".q", ".k"], ".qkv"), "takes 3 hf_names"),
        (lambda: StackConverOp([".gate"], ".fc1"), "at least two"),
        (lambda: RenameConverOp("visual.{}", "vision.weight"), "same number of"),
        (lambda: RenameConverOp(".a", "b"), "layer-relative"),
        (lambda: CopyConverOp(["a", "b"], ["c", "d"]), "exactly one name"),
        (lambda: ConcatConverOp(["a", "b"], "c", sizes=[1]), "1 sizes for 2"),
    ],
)
def test_ops_are_validated_when_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_op_without_config_says_what_to_do():
    with pytest.raises(RuntimeError, match="bind"):
        QKVConverOp([".q", ".k", ".v"], ".qkv").convert([torch.ones(1)] * 3, to_mca=True)
