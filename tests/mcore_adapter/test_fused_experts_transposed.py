"""Fused expert tensors stored transposed, as the hub has Qwen3-VL-MoE's (``gate_up_proj
[E, H, 2I]``, ``down_proj [E, I, H]``): read as transformers decides (a tensor whose last dim
is the in-memory one is not transposed), converted to the same Megatron weights as the
per-expert checkpoint, and written back transposed, bit-exact. Proved on a copy of the
qwen3_moe template registered with ``hf_fused_experts_transposed`` under its own model type."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mcore_adapter.models.converter import registry as template_module
from mcore_adapter.models.converter.convert import McaTorchSource, convert_hf_to_mca, convert_mca_to_hf
from mcore_adapter.models.converter.errors import CheckpointError
from mcore_adapter.models.converter.fused_experts import FUSED, FUSED_TRANSPOSED, FusedExperts
from mcore_adapter.models.converter.hf_io import HFCheckpoint, SafetensorsWriter
from mcore_adapter.models.converter.layout import ParallelLayout
from mcore_adapter.models.converter.template import get_template, register_template
from mcore_adapter.models.moe_common import fused_experts_table
from mcore_adapter.testing import save_with_fused_experts, save_with_transposed_fused_experts
from mcore_adapter.testing.compare import compare_hf_dirs

MODEL_TYPE = "qwen3_moe_transposed_test"
TRANSPOSED = {".mlp.experts.gate_up_proj": "hidden_size", ".mlp.experts.down_proj": "moe_intermediate_size"}
# hidden 64, 2 x 48 = 96: neither fused tensor is square, so its orientation is unambiguous.
INTERMEDIATE = 48
GATE_UP = "model.layers.0.mlp.experts.gate_up_proj"
DOWN = "model.layers.1.mlp.experts.down_proj"


@pytest.fixture
def transposed_template(monkeypatch):
    """qwen3_moe's template, registered under MODEL_TYPE with transposable fused experts; the
    registry is restored after the test."""
    base = get_template("qwen3_moe")  # the built-in templates registered before the copy
    monkeypatch.setattr(template_module, "_TEMPLATES", dict(template_module._TEMPLATES))
    return register_template(
        MODEL_TYPE,
        config_hf_to_mca=base.config_hf_to_mca,
        weight_converters=base.weight_converters,
        hf_layer_prefix=base.hf_layer_prefix,
        constant_mca_config=base.constant_mca_config,
        hf_invalid_keys=base.hf_invalid_keys,
        hf_config_expect=base.hf_config_expect,
        hf_config_defaults=base.hf_config_defaults,
        hf_architecture=base.hf_architecture,
        config_derived=base.config_derived,
        hf_fused_experts=base.hf_fused_experts,
        hf_fused_experts_transposed=TRANSPOSED,
    )


def _retype(path: Path) -> Path:
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = MODEL_TYPE
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture
def sources(transposed_template, tiny_checkpoint, tmp_path):
    """The per-expert tiny qwen3_moe, and it re-saved fused (in memory) and fused transposed
    under MODEL_TYPE."""
    per_expert = tiny_checkpoint("qwen3_moe", moe_intermediate_size=INTERMEDIATE)
    return {
        "per_expert": per_expert,
        "fused": _retype(save_with_fused_experts(per_expert, tmp_path / "fused")),
        "transposed": _retype(save_with_transposed_fused_experts(per_expert, tmp_path / "transposed")),
    }


def _weights(path) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in McaTorchSource(path).weights()}


def _rank_files(path: Path) -> dict[str, dict]:
    return {
        str(f.relative_to(path)): torch.load(f, map_location="cpu", weights_only=True)
        for f in sorted(path.rglob("*.pt"))
    }


def test_the_layouts_are_told_apart(sources):
    stored = load_file(sources["transposed"] / "model.safetensors")
    assert stored[GATE_UP].shape == (4, 64, 2 * INTERMEDIATE)
    assert stored[DOWN].shape == (4, INTERMEDIATE, 64)
    per_expert = dict(HFCheckpoint(sources["per_expert"]).tensors())
    layouts = {}
    for name in ("fused", "transposed"):
        ckpt = HFCheckpoint(sources[name], unfold_experts=True)
        layouts[name] = ckpt.expert_layout
        assert set(ckpt.keys()) == set(per_expert)
        meta = dict(ckpt.tensors(meta=True))
        assert all(meta[n].shape == per_expert[n].shape for n in per_expert)
        for n, tensor in ckpt.tensors():
            assert tensor.is_contiguous() and torch.equal(tensor, per_expert[n]), n
    assert layouts == {"fused": FUSED, "transposed": FUSED_TRANSPOSED}


@pytest.mark.parametrize("layout", [ParallelLayout(), ParallelLayout(ep=2)], ids=["tp1", "ep2"])
def test_transposed_checkpoint_converts_and_comes_back_in_its_layout(layout, sources, tmp_path):
    mca = {}
    for name, src in sources.items():
        mca[name] = tmp_path / f"{name}-mca"
        convert_hf_to_mca(src, mca[name], layout=layout, progress=False)
    expected = _rank_files(mca["per_expert"])
    assert len(expected) == layout.ep
    for name in ("fused", "transposed"):
        got = _rank_files(mca[name])
        assert got.keys() == expected.keys()
        for file, state in expected.items():
            a, b = state["model"], got[file]["model"]
            assert a.keys() == b.keys()
            assert all(not torch.is_tensor(a[k]) or torch.equal(a[k], b[k]) for k in a), file
    config = json.loads((mca["transposed"] / "mca_config.json").read_text())
    assert config["hf_expert_layout"] == FUSED_TRANSPOSED
    a, b = _weights(mca["per_expert"]), _weights(mca["transposed"])
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)

    for name in ("fused", "transposed"):
        back = tmp_path / f"{name}-hf"
        convert_mca_to_hf(mca[name], back, progress=False)
        assert compare_hf_dirs(sources[name], back) == []
    stored = load_file(tmp_path / "transposed-hf" / "model.safetensors")
    assert stored[GATE_UP].shape == (4, 64, 2 * INTERMEDIATE)
    assert load_file(tmp_path / "fused-hf" / "model.safetensors")[GATE_UP].shape == (4, 2 * INTERMEDIATE, 64)


def _replace(path: Path, name: str, tensor: torch.Tensor) -> None:
    tensors = load_file(path / "model.safetensors")
    tensors[name] = tensor
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_a_fused_tensor_of_neither_shape_is_refused(sources, tmp_path):
    _replace(sources["transposed"], DOWN, torch.zeros(4, 40, 64))
    with pytest.raises(CheckpointError) as error:
        convert_hf_to_mca(sources["transposed"], tmp_path / "mca", progress=False)
    message = str(error.value)
    assert DOWN in message and "(4, 40, 64)" in message
    assert f"[4, rows, {INTERMEDIATE}] (transformers' in-memory layout)" in message
    assert f"[4, {INTERMEDIATE}, rows] (transposed" in message


def test_mixed_orientations_are_refused(sources, tmp_path):
    stored = load_file(sources["transposed"] / "model.safetensors")
    _replace(sources["transposed"], DOWN, stored[DOWN].transpose(1, 2).contiguous())
    with pytest.raises(CheckpointError, match="mixes the two orientations of fused expert tensors"):
        convert_hf_to_mca(sources["transposed"], tmp_path / "mca", progress=False)


def test_a_square_tensor_counts_as_in_memory(transposed_template, tiny_checkpoint, tmp_path):
    """hidden 64 = 2 x 32: gate_up_proj is square, taken as in memory (as transformers does), so
    a transposed checkpoint of this shape reads as mixed and is refused, naming the square one."""
    per_expert = tiny_checkpoint("qwen3_moe")
    src = _retype(save_with_transposed_fused_experts(per_expert, tmp_path / "transposed"))
    with pytest.raises(CheckpointError, match=r"gate_up_proj is square, \(4, 64, 64\)"):
        HFCheckpoint(src, unfold_experts=True)
    fused = _retype(save_with_fused_experts(per_expert, tmp_path / "fused"))
    assert HFCheckpoint(fused, unfold_experts=True).expert_layout == FUSED


def test_only_fused_tensors_can_be_transposed(transposed_template):
    base = get_template("qwen3_moe")
    with pytest.raises(ValueError, match="not a key of hf_fused_experts"):
        register_template(
            "transposed_typo",
            config_hf_to_mca=base.config_hf_to_mca,
            weight_converters=base.weight_converters,
            hf_layer_prefix=base.hf_layer_prefix,
            hf_fused_experts=base.hf_fused_experts,
            hf_fused_experts_transposed={".mlp.experts.gate_up": "hidden_size"},
        )


# ---------------------------------------------------------------------- the writer
E, H, I = 3, 4, 5  # noqa: E741


def _per_expert() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    out = {}
    for e in range(E):
        for proj, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            out[f"model.layers.0.mlp.experts.{e}.{proj}.weight"] = torch.randn(shape, generator=generator)
    out["model.norm.weight"] = torch.randn(H, generator=generator)
    return out


def _transposed_writer(path: Path, tensors: dict[str, torch.Tensor]) -> SafetensorsWriter:
    fused = FusedExperts(fused_experts_table(), "model.layers.", TRANSPOSED)
    plan, parts = fused.fused_plan({n: (t.shape, torch.float32) for n, t in tensors.items()}, transposed=True)
    assert plan["model.layers.0.mlp.experts.gate_up_proj"][0] == (E, H, 2 * I)
    assert plan["model.layers.0.mlp.experts.down_proj"][0] == (E, I, H)
    assert all(parts[n].transposed for n in parts)
    return SafetensorsWriter(path, plan, parts=parts)


def test_writer_fills_transposed_blocks_in_any_order(tmp_path):
    tensors = _per_expert()
    names = list(tensors)
    shuffled = names[::-1][::2] + names[::-1][1::2]  # ups before gates, experts out of order
    stored = {}
    for label, order, most in (("shuffled", shuffled, E), ("in_order", names, 1)):
        (tmp_path / label).mkdir()
        writer = _transposed_writer(tmp_path / label, tensors)
        held = []
        for name in order:
            writer.write(name, tensors[name])
            held.append(len(writer._blocks))
        writer.close()
        # only blocks in progress are held: every gate_up block at once when all ups come first
        assert max(held) == most and held[-1] == 0, (label, held)
        with pytest.raises(ValueError, match="written twice"):
            writer.write(names[0], tensors[names[0]])
        stored[label] = load_file(tmp_path / label / "model.safetensors")
    for e in range(E):
        gate, up, down = (
            tensors[f"model.layers.0.mlp.experts.{e}.{p}.weight"]
            for p in ("gate_proj", "up_proj", "down_proj")
        )
        for out in stored.values():
            assert torch.equal(out["model.layers.0.mlp.experts.gate_up_proj"][e], torch.cat([gate, up]).t())
            assert torch.equal(out["model.layers.0.mlp.experts.down_proj"][e], down.t())
            assert torch.equal(out["model.norm.weight"], tensors["model.norm.weight"])


def test_writer_reports_a_part_never_written(tmp_path):
    tensors = _per_expert()
    writer = _transposed_writer(tmp_path, tensors)
    missing = "model.layers.0.mlp.experts.1.up_proj.weight"
    for name, tensor in tensors.items():
        if name != missing:
            writer.write(name, tensor)
    with pytest.raises(ValueError, match=re.escape(missing)) as error:
        writer.close()
    assert "1 fused expert block(s) left incomplete" in str(error.value)


# ---------------------------------------------------------------------- a built model
def test_model_loads_and_exports_the_transposed_layout(megatron, sources, tmp_path):
    from mcore_adapter import AutoModel
    from mcore_adapter.verify import random_tokens

    model = AutoModel.from_pretrained(sources["transposed"])
    assert model.config.hf_expert_layout == FUSED_TRANSPOSED
    reference = AutoModel.from_pretrained(sources["per_expert"])
    tokens = random_tokens(64)
    model.eval()
    reference.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens), reference(tokens))
    model.save_pretrained_as_hf(tmp_path / "hf")
    assert compare_hf_dirs(sources["transposed"], tmp_path / "hf") == []
