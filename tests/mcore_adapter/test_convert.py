"""Offline conversion (torch + safetensors only): bit-exact round trips and clear errors that
leave the output untouched."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from mcore_adapter.cli import main
from mcore_adapter.models.converter.atomic import OutputExistsError
from mcore_adapter.models.converter.convert import convert_hf_to_mca, convert_mca_to_hf
from mcore_adapter.models.converter.hf_io import CheckpointError, HFCheckpoint, save_safetensors
from mcore_adapter.models.converter.mca_io import McaCheckpointMeta, load_torch_rank, torch_rank_file
from mcore_adapter.models.converter.template import ConversionError, registered_model_types
from mcore_adapter.testing.compare import compare_hf_dirs


@pytest.mark.parametrize("model_type", registered_model_types())
@pytest.mark.parametrize("tie", [False, True])
def test_hf_mca_hf_round_trip_is_bit_exact(model_type, tie, tiny_checkpoint, tmp_path):
    src = tiny_checkpoint(model_type, tie)
    report = convert_hf_to_mca(src, tmp_path / "mca", progress=False)
    assert report.consumed == set(HFCheckpoint(src, unfold_experts=True).keys())  # experts one by one
    state = load_torch_rank(torch_rank_file(tmp_path / "mca"))
    assert ("output_layer.weight" in state) is not tie
    convert_mca_to_hf(tmp_path / "mca", tmp_path / "hf", progress=False)
    assert compare_hf_dirs(src, tmp_path / "hf") == []
    assert (tmp_path / "hf" / "generation_config.json").exists()


def test_dtype_is_kept_and_can_be_changed(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("qwen2", dtype=torch.bfloat16)
    convert_hf_to_mca(src, tmp_path / "mca", progress=False)
    assert McaCheckpointMeta.load(tmp_path / "mca").hf_weight_dtype == "bfloat16"
    convert_mca_to_hf(tmp_path / "mca", tmp_path / "back", progress=False)
    assert compare_hf_dirs(src, tmp_path / "back") == []
    convert_hf_to_mca(src, tmp_path / "mca32", dtype="fp32", progress=False)
    state = load_torch_rank(torch_rank_file(tmp_path / "mca32"))
    assert {t.dtype for t in state.values()} == {torch.float32}


def test_sharded_hf_output_has_an_index(tiny_checkpoint, tmp_path):
    src = HFCheckpoint(tiny_checkpoint("llama"))
    save_safetensors(tmp_path, dict(src.tensors()), max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert sorted(index["weight_map"]) == sorted(src.keys())
    (tmp_path / "config.json").write_text(json.dumps(src.config))
    reread = dict(HFCheckpoint(tmp_path).tensors())
    for name, tensor in src.tensors():
        assert torch.equal(reread[name], tensor)


def test_chunked_views_are_saved_compactly(tiny_checkpoint, tmp_path):
    """q/k/v split from one fused tensor must not each carry the fused storage."""
    src = tiny_checkpoint("llama")
    convert_hf_to_mca(src, tmp_path / "mca", progress=False)
    convert_mca_to_hf(tmp_path / "mca", tmp_path / "hf", progress=False)
    tensor_bytes = sum(t.numel() * t.element_size() for _, t in HFCheckpoint(src).tensors())
    file_bytes = (tmp_path / "hf" / "model.safetensors").stat().st_size
    assert file_bytes < tensor_bytes * 1.05
    rank_file = torch_rank_file(tmp_path / "mca")
    assert rank_file.stat().st_size < tensor_bytes * 1.1


def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_existing_output_is_refused_and_untouched(tiny_checkpoint, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="already exists.*--force"):
        convert_hf_to_mca(tiny_checkpoint("llama"), dst, progress=False)
    # --force replaces earlier checkpoints only, never a directory of other files.
    with pytest.raises(OutputExistsError, match=r"holds other files \(precious.txt\)"):
        convert_hf_to_mca(tiny_checkpoint("llama"), dst, force=True, progress=False)
    assert _snapshot(dst) == {dst.joinpath("precious.txt").relative_to(dst): b"keep me"}
    earlier = tmp_path / "earlier"
    convert_hf_to_mca(tiny_checkpoint("qwen3"), earlier, progress=False)
    convert_hf_to_mca(tiny_checkpoint("llama"), earlier, force=True, progress=False)
    assert McaCheckpointMeta.load(earlier).hf_model_type == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "out"]  # no staging directories left


def _copy_checkpoint(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        dst.joinpath(f.name).write_bytes(f.read_bytes())
    return dst


def test_unmapped_key_fails_before_anything_is_written(tiny_checkpoint, tmp_path):
    src = _copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "src")
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.0.self_attn.mystery.weight"] = torch.zeros(2)
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="'model.layers.0.self_attn.mystery.weight' is not mapped"):
        convert_hf_to_mca(src, tmp_path / "dst", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_missing_tensor_is_an_error(tiny_checkpoint, tmp_path):
    src = _copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "src")
    tensors = load_file(src / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"decoder.layers.1.mlp.linear_fc2.weight"):
        convert_hf_to_mca(src, tmp_path / "dst", progress=False)


def test_truncated_shard_and_missing_shard_are_clear_errors(tiny_checkpoint, tmp_path):
    src = _copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "src")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        convert_hf_to_mca(src, tmp_path / "dst", progress=False)
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="shard.*do not exist.*model-00001-of-00002"):
        convert_hf_to_mca(src, tmp_path / "dst", progress=False)


def test_unknown_model_type_is_a_clear_error(tiny_checkpoint, tmp_path):
    src = _copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "mamba_lite"}))
    with pytest.raises(
        KeyError,
        match="no conversion template for model_type 'mamba_lite'; supported: deepseek_v3, glm4_moe, internlm2, llama",
    ):
        convert_hf_to_mca(src, tmp_path / "dst", progress=False)


def test_cli_convert_both_directions_and_errors(tiny_checkpoint, tmp_path, capsys):
    src = tiny_checkpoint("qwen3")
    assert main(["convert", str(src), str(tmp_path / "mca")]) == 0
    assert main(["convert", str(tmp_path / "mca"), str(tmp_path / "hf")]) == 0
    assert compare_hf_dirs(src, tmp_path / "hf") == []
    assert main(["convert", str(src), str(tmp_path / "mca")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_converter_does_not_import_megatron_or_modeling(tiny_checkpoint, tmp_path):
    import subprocess

    code = (
        "import sys; from mcore_adapter.cli import main;"
        f"assert main(['convert', {str(tiny_checkpoint('llama'))!r}, {str(tmp_path / 'mca')!r}]) == 0;"
        "bad = [m for m in sys.modules if m.startswith('megatron') or m.startswith('transformers.models.llama.modeling')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mca_checkpoint_without_hf_config_exports_the_same_model(tiny_checkpoint, tmp_path):
    """Megatron-LM keeps no HF config: the one rebuilt from the Megatron config (with the token
    ids of generation_config.json) keeps architectures and Llama-3 rope scaling, and transformers
    computes the same logits from the export as from the original."""
    from transformers import AutoModelForCausalLM

    src = tiny_checkpoint("llama")
    convert_hf_to_mca(src, tmp_path / "mca", progress=False)
    config_file = tmp_path / "mca" / "mca_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "hf_config": None}))
    assert main(["convert", str(tmp_path / "mca"), str(tmp_path / "hf")]) == 0
    original = json.loads((src / "config.json").read_text())
    rebuilt = json.loads((tmp_path / "hf" / "config.json").read_text())
    for field in ("architectures", "rope_parameters", "head_dim", "num_key_value_heads", "eos_token_id"):
        assert rebuilt[field] == original[field], field
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    logits = [
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()(tokens).logits
        for path in (src, tmp_path / "hf")
    ]
    assert torch.equal(*logits)


def test_hub_style_config_converts_without_importing_transformers(tiny_checkpoint, tmp_path):
    """Hub configs leave out head_dim, attention_bias, mlp_bias...: transformers' defaults for them
    are the template's own (checked against transformers in test_template.py)."""
    import subprocess

    src = _copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    for field in ("attention_bias", "mlp_bias", "attention_dropout", "tie_word_embeddings"):
        del config[field]  # (head_dim stays: the tiny model's 32 is not hidden / heads)
    (src / "config.json").write_text(json.dumps(config))
    code = (
        "import sys; from mcore_adapter.cli import main;"
        f"assert main(['convert', {str(src)!r}, {str(tmp_path / 'mca')!r}]) == 0;"
        "assert 'transformers' not in sys.modules, 'transformers was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("model_type", ["llama", "qwen2_vl"])
def test_hf_config_given_for_a_checkpoint_without_one(model_type, tiny_checkpoint, tmp_path):
    """--hf-config is checked against the Megatron config as values, not as text: nested
    configs (vision_config) come back from mca_config.json with their keys sorted."""
    src = tiny_checkpoint(model_type)
    convert_hf_to_mca(src, tmp_path / "mca", progress=False)
    config_file = tmp_path / "mca" / "mca_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "hf_config": None}))
    original = json.loads((src / "config.json").read_text())
    convert_mca_to_hf(tmp_path / "mca", tmp_path / "hf", progress=False, hf_config=original)
    assert compare_hf_dirs(src, tmp_path / "hf") == []
