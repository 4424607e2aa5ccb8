"""Mixture-of-experts specifics. The shared suites already run every MoE tiny model through
config and weight round trips (test_template, test_layouts), TP1 parity with transformers,
backward and torch_dist (test_models) and the parallel layouts with both token dispatchers
(test_parallel). Here: both HF expert layouts, Megatron's two expert names, controls that
prove the parity checks notice a routing or expert mistake, ``verify --ep 2`` for every
family, and an export that streams expert by expert."""

from __future__ import annotations

import pytest
import torch

from mcore_adapter.models.converter.convert import (
    McaTorchSource,
    convert_hf_to_mca,
    convert_mca_to_hf,
    reshard_mca,
)
from mcore_adapter.models.converter.hf_io import HFCheckpoint
from mcore_adapter.models.converter.layout import ParallelLayout
from mcore_adapter.models.converter.mca_io import TorchRankReader, torch_rank_file
from mcore_adapter.parity import CONTROL_RTOL, compare_logits
from mcore_adapter.testing import MOE_MODELS, save_with_fused_experts
from mcore_adapter.testing.compare import compare_hf_dirs


def _weights(path) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in McaTorchSource(path).weights()}


@pytest.mark.parametrize("model_type", MOE_MODELS)
def test_both_expert_layouts_round_trip_through_expert_parallel_reshards(
    model_type, tiny_checkpoint, tmp_path
):
    """Per-expert (the hub's) and fused (transformers' in-memory) checkpoints convert to the
    same Megatron weights, and each comes back bit-exact, in its own layout, after
    ep2 -> tp2 x ep2 with whole experts per rank (grouped-GEMM names) -> tp2."""
    per_expert = tiny_checkpoint(model_type)
    fused = save_with_fused_experts(per_expert, tmp_path / "fused")
    assert any(name.endswith("mlp.experts.gate_up_proj") for name in HFCheckpoint(fused).weight_map)
    for name, src in (("per_expert", per_expert), ("fused", fused)):
        convert_hf_to_mca(src, tmp_path / f"{name}-ep2", layout=ParallelLayout(ep=2), progress=False)
        grouped = tmp_path / f"{name}-tp2ep2etp1"
        reshard_mca(
            tmp_path / f"{name}-ep2",
            grouped,
            ParallelLayout(tp=2, ep=2, etp=1),
            progress=False,
            moe_grouped_gemm=True,
        )
        names = TorchRankReader(torch_rank_file(grouped, 1, 0, 1, 1, 2)).chunks["model"]
        assert any(n.endswith("mlp.experts.linear_fc1.weight1") for n in names), sorted(names)[:20]
        reshard_mca(grouped, tmp_path / f"{name}-tp2", ParallelLayout(tp=2), progress=False)
        convert_mca_to_hf(tmp_path / f"{name}-tp2", tmp_path / f"{name}-hf", progress=False)
        assert compare_hf_dirs(src, tmp_path / f"{name}-hf") == []
    a, b = _weights(tmp_path / "per_expert-ep2"), _weights(tmp_path / "fused-ep2")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a)


# ---------------------------------------------------------------------- built models
def _logits(model, tokens):
    model.eval()
    with torch.no_grad():
        return model(tokens)


def _hf_logits(path, tokens):
    from mcore_adapter.verify import hf_logits

    return hf_logits(path, tokens)


def _tokens():
    from mcore_adapter.verify import random_tokens

    return random_tokens(128)


@pytest.mark.parametrize("model_type", MOE_MODELS)
def test_alltoall_dispatcher_at_tp1(model_type, megatron, tiny_checkpoint, record_layout):
    """test_models covers TP1 with the default (allgather) dispatcher; this, alltoall."""
    from mcore_adapter import AutoModel

    path = tiny_checkpoint(model_type)
    model = AutoModel.from_pretrained(path, moe_token_dispatcher_type="alltoall")
    tokens = _tokens()
    diff = compare_logits(_logits(model, tokens), _hf_logits(path, tokens))
    record_layout(model_type, False, "TP1 alltoall", diff, diff.passed())
    assert diff.passed(), diff.describe()


@pytest.mark.parametrize("model_type", ["qwen3_moe", "mixtral"])
def test_fused_checkpoint_loads_and_exports_in_its_layout(model_type, megatron, tiny_checkpoint, tmp_path):
    from mcore_adapter import AutoModel

    fused = save_with_fused_experts(tiny_checkpoint(model_type), tmp_path / "fused")
    model = AutoModel.from_pretrained(fused)
    tokens = _tokens()
    assert compare_logits(_logits(model, tokens), _hf_logits(fused, tokens)).passed()
    model.save_pretrained_as_hf(tmp_path / "hf")
    assert compare_hf_dirs(fused, tmp_path / "hf") == []
    # An inference engine gets the hub's per-expert names, one expert at a time.
    exported = dict(model.export_hf_weights())
    assert exported.keys() == set(HFCheckpoint(tiny_checkpoint(model_type)).keys())


def test_grouped_gemm_rank_files_load_into_a_sequential_mlp_model(megatron, tiny_checkpoint, tmp_path):
    from mcore_adapter import AutoModel

    path = tiny_checkpoint("glm4_moe")
    convert_hf_to_mca(path, tmp_path / "grouped", moe_grouped_gemm=True, progress=False)
    names = TorchRankReader(torch_rank_file(tmp_path / "grouped")).chunks["model"]
    assert "decoder.layers.1.mlp.experts.linear_fc2.weight3" in names
    model = AutoModel.from_pretrained(tmp_path / "grouped")
    assert not model.config.moe_grouped_gemm  # the local spec's SequentialMLP, on CPU
    tokens = _tokens()
    torch.testing.assert_close(_logits(model, tokens), _logits(AutoModel.from_pretrained(path), tokens))


def _expert_layers(model):
    return [layer.mlp for layer in model.decoder.layers if hasattr(layer.mlp, "router")]


def _swap_experts(model) -> None:
    for mlp in _expert_layers(model):
        a, b = mlp.experts.local_experts[0], mlp.experts.local_experts[1]
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            tmp = p.detach().clone()
            p.data.copy_(q.data)
            q.data.copy_(tmp)


def _swap_gate_up_in_expert(model) -> None:
    for mlp in _expert_layers(model):
        fc1 = mlp.experts.local_experts[0].linear_fc1.weight
        gate, up = fc1.detach().clone().chunk(2)
        fc1.data.copy_(torch.cat([up, gate]))


def _drop_correction_bias(model) -> None:
    for mlp in _expert_layers(model):
        mlp.router.expert_bias.zero_()


CONTROLS = [
    ("qwen3_moe", "swapped-expert-order", _swap_experts, {}),
    ("mixtral", "gate-up-swap-in-an-expert", _swap_gate_up_in_expert, {}),
    ("deepseek_v3", "dropped-correction-bias", _drop_correction_bias, {}),
    ("glm4_moe", "dropped-correction-bias", _drop_correction_bias, {}),
    # norm_topk_prob=True read as False (and the reverse): top-k weights (un)normalized
    ("qwen3_moe", "wrong-norm-topk-prob", None, {"moe_router_pre_softmax": True}),
    ("qwen2_moe", "wrong-norm-topk-prob", None, {"moe_router_pre_softmax": False}),
]


@pytest.mark.parametrize(
    ("model_type", "breakage", "overrides"),
    [pytest.param(t, b, o, id=f"{t}-{i}") for t, i, b, o in CONTROLS],
)
def test_parity_check_notices_an_expert_or_routing_mistake(
    model_type, breakage, overrides, megatron, tiny_checkpoint
):
    from mcore_adapter import AutoModel

    path = tiny_checkpoint(model_type)
    tokens = _tokens()
    expected = _hf_logits(path, tokens)
    good = AutoModel.from_pretrained(path)
    assert compare_logits(_logits(good, tokens), expected).passed()
    model = AutoModel.from_pretrained(path, **overrides)
    if breakage is not None:
        with torch.no_grad():
            breakage(model)
    diff = compare_logits(_logits(model, tokens), expected)
    assert diff.relative > CONTROL_RTOL, f"the mistake moved the logits by only {diff.describe()}"


def test_multi_token_prediction_layers(megatron, tiny_checkpoint, tmp_path):
    """DeepSeek-V3's MTP layer (as the hub stores it, after the decoder layers) converts to
    Megatron's MTP block: offline round trips bit-exact through EP, PP (the last stage keeps
    the embedding too) and grouped-GEMM names; a built model keeps the main logits, trains the
    MTP loss with its weights, and exports and reloads them bit-exactly."""
    from mcore_adapter import AutoModel

    path = tiny_checkpoint("deepseek_v3", mtp_layers=1)
    convert_hf_to_mca(path, tmp_path / "ep2", layout=ParallelLayout(ep=2), progress=False)
    reshard_mca(tmp_path / "ep2", tmp_path / "pp2", ParallelLayout(pp=2), progress=False)
    last_stage = TorchRankReader(torch_rank_file(tmp_path / "pp2", 0, 1, 2)).chunks["model"]
    assert {"embedding.word_embeddings.weight", "mtp.layers.0.eh_proj.weight"} <= set(last_stage)
    reshard_mca(
        tmp_path / "pp2",
        tmp_path / "grouped",
        ParallelLayout(tp=2, ep=2, etp=1),
        moe_grouped_gemm=True,
        progress=False,
    )
    convert_mca_to_hf(tmp_path / "grouped", tmp_path / "hf", progress=False)
    assert compare_hf_dirs(path, tmp_path / "hf") == []

    model = AutoModel.from_pretrained(path)
    assert model.config.mtp_num_layers == 1
    tokens = _tokens()
    assert compare_logits(_logits(model, tokens), _hf_logits(path, tokens)).passed()
    model.train()
    loss = model(tokens, labels=tokens).sum()
    loss.backward()
    eh_proj = model.mtp.layers[0].eh_proj.weight
    assert eh_proj.grad is not None and eh_proj.grad.abs().sum() > 0
    model.save_pretrained_as_hf(tmp_path / "exported")
    assert compare_hf_dirs(path, tmp_path / "exported") == []
    model.save_pretrained(tmp_path / "dist")
    reloaded = AutoModel.from_pretrained(tmp_path / "dist")
    reloaded.save_pretrained_as_hf(tmp_path / "reloaded")
    assert compare_hf_dirs(path, tmp_path / "reloaded") == []


def test_dropping_mtp_layers_is_explicit(tiny_checkpoint, tmp_path, capsys):
    from mcore_adapter.cli import main

    path = tiny_checkpoint("deepseek_v3", mtp_layers=1)
    assert main(["convert", str(path), str(tmp_path / "kept")]) == 0
    kept = TorchRankReader(torch_rank_file(tmp_path / "kept")).chunks["model"]
    assert "mtp.layers.0.eh_proj.weight" in kept
    assert main(["convert", str(path), str(tmp_path / "dropped"), "--drop-mtp"]) == 0
    assert "dropped 1 multi-token-prediction layer(s) (--drop-mtp)" in capsys.readouterr().out
    dropped = TorchRankReader(torch_rank_file(tmp_path / "dropped")).chunks["model"]
    assert not [n for n in dropped if n.startswith("mtp.")]
    assert set(dropped) == {n for n in kept if not n.startswith("mtp.")}


def test_export_streams_expert_by_expert(megatron, tiny_checkpoint):
    """With the smallest buckets every yielded tensor is one expert's (or a dense weight): the
    export never holds a layer's experts, nor a fused tensor, at once."""
    from mcore_adapter import AutoModel
    from mcore_adapter.models.export import export_hf_buckets

    path = tiny_checkpoint("deepseek_v3")
    model = AutoModel.from_pretrained(path)
    source = dict(HFCheckpoint(path).tensors())
    seen = {}
    for bucket in export_hf_buckets([model], bucket_bytes=1):
        assert len({name.rsplit(".", 2)[0] for name, _ in bucket}) <= 2, [n for n, _ in bucket]
        for name, tensor in bucket:
            assert tensor.dim() <= 2, name
            seen[name] = tensor
    assert seen.keys() == source.keys()
    assert all(torch.equal(seen[n], source[n]) for n in source)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("model_type", MOE_MODELS)
def test_verify_at_ep2(model_type, tiny_checkpoint, capsys):
    from mcore_adapter.cli import main
    from mcore_adapter.parity import FP32_RTOL

    assert main(["verify", str(tiny_checkpoint(model_type)), "--ep", "2"]) == 0
    verdict, *fields = capsys.readouterr().out.strip().splitlines()[-1].split()
    fields = dict(field.split("=", 1) for field in fields)
    assert verdict == "PASS" and fields["layout"] == "tp1pp1ep2"
    assert float(fields["max_rel_diff"]) <= FP32_RTOL
