"""MCA checkpoints written by ROLL's own mcore_adapter (tests/data/roll_written, see its README):
a flat Megatron config with the HF config as a string, rank files holding views of whole
weights, an unpadded vocab split. They convert back to their HF source bit-exactly, at their own
layout and after a reshard; a ROLL config that lost its HF config is rebuilt or supplied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mcore_adapter.cli import main
from mcore_adapter.models.converter.convert import convert_mca_to_hf, reshard_mca
from mcore_adapter.models.converter.errors import ConversionError
from mcore_adapter.models.converter.layout import ParallelLayout
from mcore_adapter.models.converter.mca_io import McaCheckpointMeta
from mcore_adapter.testing.compare import compare_hf_dirs

DATA = Path(__file__).resolve().parents[1] / "data" / "roll_written"
HF, ROLL = DATA / "llama_hf", DATA / "llama_tp2pp2_by_roll"


def test_roll_config_is_read_with_its_layout_and_hf_config():
    meta = McaCheckpointMeta.load(ROLL)
    assert meta.checkpoint_format == "torch" and meta.hf_weight_dtype == "bfloat16"
    assert meta.layout == ParallelLayout(tp=2, pp=2)
    assert meta.hf_config == json.loads((HF / "config.json").read_text())
    # The architecture follows the HF config ROLL kept (its own dump says kv_channels=16).
    assert meta.mca_config["kv_channels"] == 32 and meta.mca_config["padded_vocab_size"] == 128


def test_roll_checkpoint_converts_back_bit_exactly(tmp_path):
    convert_mca_to_hf(ROLL, tmp_path / "hf", progress=False)
    assert compare_hf_dirs(HF, tmp_path / "hf") == []  # config included
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (ROLL / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("layout", [ParallelLayout(), ParallelLayout(pp=4), ParallelLayout(tp=4)])
def test_roll_checkpoint_reshards_and_converts_back_bit_exactly(layout, tmp_path):
    reshard_mca(ROLL, tmp_path / "mca", layout, progress=False)
    assert McaCheckpointMeta.load(tmp_path / "mca").layout == layout
    assert main(["convert", str(tmp_path / "mca"), str(tmp_path / "hf")]) == 0
    assert compare_hf_dirs(HF, tmp_path / "hf") == []


@pytest.fixture
def roll_without_hf_config(tmp_path):
    """ROLL's checkpoint as older versions wrote it: no hf_config_json."""
    path = shutil.copytree(ROLL, tmp_path / "roll")
    config = json.loads((path / "mca_config.json").read_text())
    del config["hf_config_json"]
    (path / "mca_config.json").write_text(json.dumps(config))
    return path


def test_roll_dump_without_hf_config_is_checked_against_its_weights(roll_without_hf_config, tmp_path):
    """Its dump's kv_channels (16) does not describe its weights (head_dim 32): the shape check
    says so and points to --hf-config, which converts it bit-exactly."""
    shutil.copy(HF / "generation_config.json", roll_without_hf_config)  # token ids for the rebuild
    with pytest.raises(
        ConversionError, match=r"(?s)kv_channels=16.*--hf-config.*linear_qkv.weight: expected"
    ):
        convert_mca_to_hf(roll_without_hf_config, tmp_path / "hf", progress=False)
    assert not (tmp_path / "hf").exists()
    hf_config = json.loads((HF / "config.json").read_text())
    convert_mca_to_hf(roll_without_hf_config, tmp_path / "hf", progress=False, hf_config=hf_config)
    assert compare_hf_dirs(HF, tmp_path / "hf") == []


def test_hf_config_is_rebuilt_from_roll_dump_fields(roll_without_hf_config):
    shutil.copy(HF / "generation_config.json", roll_without_hf_config)
    meta = McaCheckpointMeta.load(roll_without_hf_config)
    assert meta.hf_config["architectures"] == ["LlamaForCausalLM"]
    assert meta.hf_config["vocab_size"] == 128  # ROLL's padded_vocab_size is HF's vocab_size
    assert (meta.hf_config["bos_token_id"], meta.hf_config["eos_token_id"]) == (1, 2)
