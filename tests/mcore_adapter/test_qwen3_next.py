"""Qwen3-Next (Gated DeltaNet + gated attention + MoE) on Megatron-Core: logits parity with
transformers at TP1 on sequences shorter and longer than the delta rule's chunk, and controls
showing that each layout the converter produces matters (layouts: test_parallel.py, round
trips: test_convert.py and test_moe.py run the registry)."""

from __future__ import annotations

import pytest
import torch

from mcore_adapter.parity import CONTROL_RTOL, LogitsDiff, compare_logits

LENGTHS = [16, 64, 65, 130]  # the chunked delta rule works in chunks of 64


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint("qwen3_next")


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture
def mca_model(checkpoint, megatron):
    from mcore_adapter import AutoModel

    return AutoModel.from_pretrained(checkpoint, dtype=torch.float32).eval()


def diff_with_hf(mca_model, hf_model, seq_len: int = 40) -> LogitsDiff:
    tokens = torch.randint(0, 128, (2, seq_len), generator=torch.Generator().manual_seed(seq_len))
    with torch.no_grad():
        expected = hf_model(tokens).logits
        actual = mca_model(tokens)[..., : expected.shape[-1]]
    return compare_logits(actual, expected)


def test_the_layers_are_megatrons_own(mca_model):
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet
    from megatron.core.transformer.attention import SelfAttention
    from megatron.core.transformer.moe.moe_layer import MoELayer

    kinds = [type(layer.self_attention) for layer in mca_model.decoder.layers]
    assert kinds == [GatedDeltaNet, GatedDeltaNet, SelfAttention, GatedDeltaNet]
    assert [isinstance(layer.mlp, MoELayer) for layer in mca_model.decoder.layers] == [
        True,
        True,
        True,
        False,
    ]
    assert mca_model.config.attention_output_gate and mca_model.config.layernorm_zero_centered_gamma


@pytest.mark.parametrize("seq_len", LENGTHS)
def test_logits_match_transformers(seq_len, hf_model, mca_model, record_layout):
    diff = diff_with_hf(mca_model, hf_model, seq_len)
    record_layout("qwen3_next", False, "TP1", diff, diff.passed())
    assert diff.passed(), f"{seq_len} tokens: {diff.describe()}"


def _drop_out_norm_offset(model):
    for layer in model.decoder.layers:
        if hasattr(layer.self_attention, "out_norm"):
            layer.self_attention.out_norm.weight.add_(1.0)  # HF's w where Megatron keeps w - 1


def _deinterleave_query_and_gate(model):
    attention = model.decoder.layers[2].self_attention  # q_proj read as [all queries; all gates]
    heads, groups, d = (
        model.config.num_attention_heads,
        model.config.num_query_groups,
        model.config.kv_channels,
    )
    per = heads // groups
    weight = attention.linear_qkv.weight
    grouped = weight.view(groups, (2 * per + 2) * d, -1)
    query_gate = grouped[:, : 2 * per * d].reshape(groups, per, 2, d, -1)  # as the converter wrote it
    grouped[:, : 2 * per * d] = query_gate.transpose(1, 2).reshape(groups, 2 * per * d, -1).clone()


def _transpose_conv(model):
    for layer in model.decoder.layers:
        if hasattr(layer.self_attention, "conv1d"):
            layer.self_attention.conv1d.weight.copy_(layer.self_attention.conv1d.weight.flip(-1))


@pytest.mark.parametrize(
    "control",
    [_drop_out_norm_offset, _deinterleave_query_and_gate, _transpose_conv],
    ids=["zero-centered offset dropped", "query and gate de-interleaved", "conv taps reversed"],
)
def test_a_wrong_layout_moves_the_logits(control, hf_model, mca_model):
    with torch.no_grad():
        control(mca_model)
    assert diff_with_hf(mca_model, hf_model).relative > CONTROL_RTOL


def test_offset_norm_round_trip_is_exact_where_norms_live():
    """w -> w - 1 -> w is exact for w in [0.5, 2] (trained norms); outside, it warns."""
    from mcore_adapter.models.linear_attention import OffsetConverOp

    op = OffsetConverOp(".n.weight", ".m.weight", offset=-1.0)
    w = torch.linspace(0.5, 2.0, 10001)
    assert torch.equal(op.convert(op.convert([w], to_mca=True), to_mca=False)[0], w)
    with pytest.warns(UserWarning, match="not exact"):
        op.convert([torch.tensor([0.1234567, 1.0])], to_mca=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"config": {"linear_num_key_heads": 2, "linear_num_value_heads": 4}, "layout": {"tp": 4}},
            "linear_num_key_heads=2 is not divisible by tp=4",
        ),
        ({"config": {"layer_types": ["linear_attention", "sliding_attention"] * 2}}, "layer_types holds"),
        ({"tensor": ("model.layers.0.linear_attn.in_proj_ba.weight", (12, 64))}, "in_proj_ba.weight"),
    ],
    ids=["linear heads over tp", "unknown layer type", "in_proj of the wrong size"],
)
def test_bad_inputs_are_refused_with_the_reason(change, message, checkpoint, tmp_path):
    """What a user can get wrong with a hybrid model: each refused before anything is written."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from mcore_adapter.models.converter.convert import convert_hf_to_mca
    from mcore_adapter.models.converter.layout import ParallelLayout

    source = tmp_path / "hf"
    shutil.copytree(checkpoint, source)
    if "config" in change:
        config = json.loads((source / "config.json").read_text())
        (source / "config.json").write_text(json.dumps({**config, **change["config"]}))
    if "tensor" in change:
        name, shape = change["tensor"]
        tensors = load_file(source / "model.safetensors")
        tensors[name] = torch.zeros(shape)
        save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Exception, match=message):
        convert_hf_to_mca(
            source, tmp_path / "mca", layout=ParallelLayout(**change.get("layout", {})), progress=False
        )
    assert not (tmp_path / "mca").exists()
