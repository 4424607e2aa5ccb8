"""Megatron-Core models built from HF checkpoints: logits parity with transformers (the
upstream implementation), backward, save/load through dist_checkpointing, and detection of
wrong conversions. All cases share one process and one single-rank gloo group."""

from __future__ import annotations

import pytest
import torch

from mcore_adapter.models.converter import registry as template_module
from mcore_adapter.models.converter.convert import convert_hf_to_mca
from mcore_adapter.models.converter.template import (
    ConcatConverOp,
    QKVConverOp,
    StackConverOp,
    Template,
    get_template,
)
from mcore_adapter.parity import CONTROL_RTOL, assert_logits_close, compare_logits
from mcore_adapter.testing import TINY_MODELS
from mcore_adapter.testing.compare import compare_hf_dirs


def hf_logits(path, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return model(tokens).logits


def tokens_for(seq_len=16, batch=2, vocab=128, seed=0):
    return torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def mca_logits(model, tokens):
    model.eval()
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize("model_type", sorted(TINY_MODELS))
@pytest.mark.parametrize("tie", [False, True])
def test_logits_match_transformers_and_backward_runs(
    model_type, tie, megatron, tiny_checkpoint, record_layout
):
    from mcore_adapter import AutoModel, McaGPTModel

    path = tiny_checkpoint(model_type, tie)
    model = AutoModel.from_pretrained(path)
    assert isinstance(model, McaGPTModel)
    assert model.config.tie_embeddings_and_output_weights is tie
    tokens = tokens_for()
    expected = hf_logits(path, tokens)
    actual = mca_logits(model, tokens)
    assert actual.shape == expected.shape
    diff = compare_logits(actual, expected)
    record_layout(model_type, tie, "TP1", diff, diff.passed())
    assert_logits_close(actual, expected)

    model.train()
    model.zero_grad()
    model(tokens).float().pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if g is None
    ]
    assert grads["embedding.word_embeddings.weight"].abs().sum() > 0


@pytest.mark.parametrize("model_type", sorted(TINY_MODELS))
@pytest.mark.parametrize("tie", [False, True])
def test_model_save_load_and_export_round_trip(model_type, tie, megatron, tiny_checkpoint, tmp_path):
    """HF -> model -> MCA (torch_dist) -> model -> HF is bit-exact, as is loading the offline
    converter's torch-format output."""
    from mcore_adapter import AutoModel

    path = tiny_checkpoint(model_type, tie)
    AutoModel.from_pretrained(path).save_pretrained(tmp_path / "mca_dist")
    reloaded = AutoModel.from_pretrained(tmp_path / "mca_dist")
    reloaded.save_pretrained_as_hf(tmp_path / "hf")
    assert compare_hf_dirs(path, tmp_path / "hf") == []

    convert_hf_to_mca(path, tmp_path / "mca_torch", progress=False)
    from_torch = AutoModel.from_pretrained(tmp_path / "mca_torch")
    tokens = tokens_for()
    torch.testing.assert_close(mca_logits(from_torch, tokens), mca_logits(reloaded, tokens), rtol=0, atol=0)


def test_bf16_checkpoint_exports_in_bf16(megatron, tiny_checkpoint, tmp_path):
    from mcore_adapter import AutoModel

    path = tiny_checkpoint("llama", dtype=torch.bfloat16)
    model = AutoModel.from_pretrained(path)
    assert model.embedding.word_embeddings.weight.dtype == torch.float32
    model.save_pretrained_as_hf(tmp_path / "hf")
    assert compare_hf_dirs(path, tmp_path / "hf") == []


def _with_ops(template: Template, replace) -> Template:
    ops = [replace(op) for op in template.weight_converters]
    return Template(
        hf_model_type=template.hf_model_type,
        config_hf_to_mca=template.config_hf_to_mca,
        weight_converters=ops,
        hf_layer_prefix=template.hf_layer_prefix,
        constant_mca_config=template.constant_mca_config,
        hf_invalid_keys=template.hf_invalid_keys,
        hf_config_expect=template.hf_config_expect,
    )


def _swap_gate_up(op):
    if isinstance(op, StackConverOp):
        return StackConverOp(op.hf_names[::-1], op.mca_names, dim=op.dim)
    return op


def _ungrouped_qkv(op):
    if type(op) is QKVConverOp:  # the right shapes (tiny llama: q 4 x 32 rows, k and v 2 x 32), wrong order
        return ConcatConverOp(op.hf_names, op.mca_names, dim=0, sizes=[128, 64, 64])
    return op


@pytest.mark.parametrize(
    "breakage", [_swap_gate_up, _ungrouped_qkv], ids=["swapped-gate-up", "ungrouped-qkv"]
)
def test_parity_check_catches_a_wrong_conversion(breakage, megatron, tiny_checkpoint, monkeypatch):
    from mcore_adapter import AutoModel

    path = tiny_checkpoint("llama")
    monkeypatch.setitem(template_module._TEMPLATES, "llama", _with_ops(get_template("llama"), breakage))
    tokens = tokens_for()
    diff = compare_logits(mca_logits(AutoModel.from_pretrained(path), tokens), hf_logits(path, tokens))
    assert diff.relative > CONTROL_RTOL, f"a broken conversion went unnoticed: {diff.describe()}"


def test_rope_scaling_parameters_and_sliding_window_matter(megatron, tiny_checkpoint):
    """Controls for two config translations: without them the logits move far from HF's."""
    from mcore_adapter import AutoModel

    tokens = tokens_for(seq_len=16)
    llama = tiny_checkpoint("llama")
    diff = compare_logits(
        mca_logits(
            AutoModel.from_pretrained(llama, rope_scaling_original_max_position_embeddings=8192), tokens
        ),
        hf_logits(llama, tokens),
    )
    assert diff.relative > CONTROL_RTOL, diff.describe()
    mistral = tiny_checkpoint("mistral")
    diff = compare_logits(
        mca_logits(AutoModel.from_pretrained(mistral, sliding_window=None), tokens),
        hf_logits(mistral, tokens),
    )
    assert diff.relative > CONTROL_RTOL, diff.describe()


def test_verify_cli_prints_its_verdict_last(megatron, tiny_checkpoint, capsys, monkeypatch):
    """The last line: PASS|FAIL key=value... (test_demo_and_verify.py checks the whole report)."""
    from mcore_adapter.cli import main
    from mcore_adapter.parity import FP32_RTOL

    path = str(tiny_checkpoint("qwen2"))
    assert main(["verify", path]) == 0
    verdict, *fields = capsys.readouterr().out.strip().splitlines()[-1].split()
    fields = dict(field.split("=", 1) for field in fields)
    assert verdict == "PASS" and float(fields["max_rel_diff"]) <= FP32_RTOL
    # A wrong conversion (gate and up swapped) fails with exit status 1.
    monkeypatch.setitem(template_module._TEMPLATES, "qwen2", _with_ops(get_template("qwen2"), _swap_gate_up))
    assert main(["verify", path]) == 1
    verdict, *fields = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert verdict == "FAIL" and float(dict(field.split("=", 1) for field in fields)["max_abs_diff"]) > 1.0


def test_mca_to_hf_from_torch_dist_through_the_cli(megatron, tiny_checkpoint, tmp_path):
    from mcore_adapter.cli import main

    path = tiny_checkpoint("mistral")
    assert main(["convert", str(path), str(tmp_path / "mca"), "--format", "torch_dist"]) == 0
    assert main(["convert", str(tmp_path / "mca"), str(tmp_path / "hf")]) == 0
    assert compare_hf_dirs(path, tmp_path / "hf") == []
    assert main(["convert", str(tmp_path / "mca"), str(tmp_path / "hf16"), "--dtype", "bf16"]) == 0
    from mcore_adapter.models.converter.hf_io import HFCheckpoint

    assert {t.dtype for _, t in HFCheckpoint(tmp_path / "hf16").tensors()} == {torch.bfloat16}


@pytest.mark.parametrize(
    ("model_type", "layout"),
    [
        ("llama", ["--tp", "2", "--pp", "2"]),
        ("qwen3_moe", ["--ep", "2", "--tp", "2", "--etp", "1"]),
    ],
    ids=["tp2pp2", "tp2ep2etp1"],
)
def test_multi_rank_torch_checkpoint_to_torch_dist_in_one_command(
    model_type, layout, megatron, tiny_checkpoint, tmp_path
):
    """A 'torch' checkpoint of several ranks, loaded by a one-process job, is merged weight by
    weight: it converts to torch_dist with one command and back to HF bit-exactly, and loads
    with the logits of the HF checkpoint."""
    from mcore_adapter import AutoModel
    from mcore_adapter.cli import main

    path = tiny_checkpoint(model_type)
    assert main(["convert", str(path), str(tmp_path / "ranks"), *layout]) == 0
    assert main(["convert", str(tmp_path / "ranks"), str(tmp_path / "dist"), "--format", "torch_dist"]) == 0
    assert main(["convert", str(tmp_path / "dist"), str(tmp_path / "hf")]) == 0
    assert compare_hf_dirs(path, tmp_path / "hf") == []
    tokens = tokens_for()
    expected = hf_logits(path, tokens)
    actual = mca_logits(AutoModel.from_pretrained(tmp_path / "ranks"), tokens)
    assert_logits_close(actual[..., : expected.shape[-1]], expected)  # the vocab was padded for tp2


def test_export_yields_the_checkpoint_in_bounded_buckets(megatron, tiny_checkpoint):
    from mcore_adapter import AutoModel
    from mcore_adapter.models.converter.hf_io import HFCheckpoint
    from mcore_adapter.models.export import export_hf_buckets

    path = tiny_checkpoint("qwen3")
    model = AutoModel.from_pretrained(path)
    source = dict(HFCheckpoint(path).tensors())
    largest = max(t.numel() * t.element_size() for t in source.values())
    bucket_bytes = 3 * largest // 2
    buckets = list(export_hf_buckets([model], bucket_bytes))
    assert len(buckets) > 2
    # A bucket closes once it reaches the size, so it overshoots by less than one Megatron weight
    # (a fused gate+up weight is twice the largest HF tensor).
    for bucket in buckets:
        assert sum(t.numel() * t.element_size() for _, t in bucket) < bucket_bytes + 2 * largest
    exported = dict(pair for bucket in buckets for pair in bucket)
    assert exported.keys() == source.keys()
    assert all(torch.equal(exported[name], source[name]) for name in source)
