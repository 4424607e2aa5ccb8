"""Megatron's Gated DeltaNet on CPU: the torch kernels the platform module supplies when
flash-linear-attention is missing, against transformers' own (Qwen3-Next's torch fallback)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def kernels():
    from megatron.core.ssm import gated_delta_net
    from transformers.models.qwen3_next import modeling_qwen3_next

    from mcore_adapter import platform

    platform.apply_gated_delta_net_fallback()
    assert gated_delta_net.HAVE_FLA  # the layer builds
    return gated_delta_net, modeling_qwen3_next


@pytest.mark.parametrize("seq_len", [1, 17, 64, 100, 130])  # below, at, between and above chunk sizes
def test_chunked_gated_delta_rule_equals_transformers(kernels, seq_len):
    ours, theirs = kernels
    generator = torch.Generator().manual_seed(seq_len)
    batch, heads, dk, dv = 2, 4, 16, 24

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    query, key, value = (
        rand(batch, seq_len, heads, dk),
        rand(batch, seq_len, heads, dk),
        rand(batch, seq_len, heads, dv),
    )
    g = -torch.nn.functional.softplus(rand(batch, seq_len, heads))  # log decay, < 0
    beta = rand(batch, seq_len, heads).sigmoid()
    # Megatron normalizes q and k before the kernel; transformers inside it.
    out, _ = ours.chunk_gated_delta_rule(
        ours.l2norm(query), ours.l2norm(key), value, g=g, beta=beta, use_qk_l2norm_in_kernel=False
    )
    expected, _ = theirs.torch_chunk_gated_delta_rule(
        query, key, value, g=g, beta=beta, use_qk_l2norm_in_kernel=True
    )
    assert out.shape == expected.shape == (batch, seq_len, heads, dv)
    assert (out - expected).abs().max().item() <= 1e-5


def test_l2norm_equals_transformers(kernels):
    ours, theirs = kernels
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours.l2norm(x), theirs.l2norm(x), rtol=0, atol=0)
