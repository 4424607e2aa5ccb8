"""Parallel layouts in the offline converter (torch + safetensors only, no megatron import):
placement rules, bit-exact round trips through every layout and reshard chains, the written
files, and clear errors before anything is written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mcore_adapter.cli import main
from mcore_adapter.models.converter.convert import convert_hf_to_mca, convert_mca_to_hf, reshard_mca
from mcore_adapter.models.converter.dist_converter import DistConverter
from mcore_adapter.models.converter.hf_io import CheckpointError, HFCheckpoint
from mcore_adapter.models.converter.layout import LayoutError, ParallelLayout, padded_vocab_size
from mcore_adapter.models.converter.mca_io import McaCheckpointMeta, iteration_dir, torch_rank_file
from mcore_adapter.models.converter.template import ConversionError, get_template
from mcore_adapter.testing import TINY_MODELS
from mcore_adapter.testing.compare import compare_hf_dirs

MODEL = {"num_layers": 8, "num_attention_heads": 4, "num_query_groups": 2}

LAYOUTS = {
    "tp2": ParallelLayout(tp=2),
    "tp4": ParallelLayout(tp=4),  # 2 query groups < tp: Megatron splits inside the groups
    "pp2": ParallelLayout(pp=2),
    "pp4": ParallelLayout(pp=4),
    "tp2pp2": ParallelLayout(tp=2, pp=2),
    "pp2vpp2": ParallelLayout(pp=2, vpp=2),
    "tp2pp2vpp2": ParallelLayout(tp=2, pp=2, vpp=2),
    "pp2-uneven": ParallelLayout(
        pp=2, num_layers_in_first_pipeline_stage=1, num_layers_in_last_pipeline_stage=3
    ),
}


def layers_of(layout: ParallelLayout) -> list[tuple[int, int | None, list[int]]]:
    return [(c.pp_rank, c.vp_stage, list(c.layers)) for c in layout.validate(MODEL).chunks]


def test_layer_placement_follows_megatron():
    # Megatron-Core assigns consecutive layers per (virtual stage, pipeline rank), virtual stage major.
    assert layers_of(ParallelLayout(pp=2)) == [(0, None, [0, 1, 2, 3]), (1, None, [4, 5, 6, 7])]
    assert layers_of(ParallelLayout(pp=2, vpp=2)) == [
        (0, 0, [0, 1]),
        (1, 0, [2, 3]),
        (0, 1, [4, 5]),
        (1, 1, [6, 7]),
    ]
    uneven = ParallelLayout(pp=3, num_layers_in_first_pipeline_stage=1, num_layers_in_last_pipeline_stage=3)
    assert layers_of(uneven) == [(0, None, [0]), (1, None, [1, 2, 3, 4]), (2, None, [5, 6, 7])]
    chunks = ParallelLayout(pp=2, vpp=2).validate(MODEL).chunks
    assert [(c.pre_process, c.post_process) for c in chunks] == [
        (True, False),
        (False, False),
        (False, False),
        (False, True),
    ]


@pytest.mark.parametrize(
    "layout, message",
    [
        (ParallelLayout(tp=3), "num_attention_heads=4 is not divisible by tp=3"),
        (ParallelLayout(tp=4), None),
        (
            ParallelLayout(pp=3),
            r"num_layers=8 is not divisible by pp x vpp = 3 x 1; give num_layers_in_first",
        ),
        (ParallelLayout(pp=2, vpp=3), "not divisible by pp x vpp = 2 x 3"),
        (ParallelLayout(vpp=2), "needs pp >= 2"),
        (
            ParallelLayout(pp=3, num_layers_in_first_pipeline_stage=3),
            "the 5 middle layers do not split evenly over 2",
        ),
        (
            ParallelLayout(pp=2, num_layers_in_first_pipeline_stage=8),
            "first=8 leaves 0 of the model.s 8 layers for the other 1 pipeline stage",
        ),
        (ParallelLayout(num_layers_in_last_pipeline_stage=2), "need pp > 1"),
    ],
)
def test_layouts_megatron_rejects_are_rejected(layout, message):
    if message is None:
        layout.validate(MODEL)
        return
    with pytest.raises(LayoutError, match=message):
        layout.validate(MODEL)


def test_query_groups_must_divide_or_be_a_multiple_of_tp():
    ParallelLayout(tp=4).validate({**MODEL, "num_attention_heads": 8, "num_query_groups": 2})
    with pytest.raises(LayoutError, match="num_query_groups=3 is neither a multiple nor a divisor of tp=2"):
        ParallelLayout(tp=2).validate({**MODEL, "num_attention_heads": 6, "num_query_groups": 3})


def test_tensor_parallel_split_rules():
    kwargs = {**MODEL, "swiglu": True, "vocab_size": 100, **ParallelLayout(tp=2).to_kwargs()}
    conv = DistConverter(kwargs, ParallelLayout(tp=2))
    fc1 = torch.arange(8.0).reshape(8, 1)  # gate rows 0-3, up rows 4-7
    assert [p.flatten().tolist() for p in conv.split("decoder.layers.0.mlp.linear_fc1.weight", fc1)] == [
        [0, 1, 4, 5],
        [2, 3, 6, 7],
    ]
    proj = torch.arange(8.0).reshape(2, 4)
    parts = conv.split("decoder.layers.3.self_attention.linear_proj.weight", proj)
    assert [p.tolist() for p in parts] == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]
    norm = torch.ones(4)
    assert all(p is norm for p in conv.split("decoder.layers.0.mlp.linear_fc1.layer_norm_weight", norm))
    # Vocab padded to a multiple of 128 x tp (Megatron-LM's default), zeros in the padding.
    embedding = torch.randn(100, 3)
    parts = conv.split("embedding.word_embeddings.weight", embedding)
    assert [p.shape[0] for p in parts] == [128, 128] == [padded_vocab_size(100, 2) // 2] * 2
    assert torch.equal(parts[0][:100], embedding[:100]) and not parts[1].any()
    for name, tensor in [
        ("decoder.layers.0.mlp.linear_fc1.weight", fc1),
        ("decoder.layers.3.self_attention.linear_proj.weight", proj),
        ("embedding.word_embeddings.weight", embedding),
    ]:
        assert torch.equal(conv.merge(name, conv.split(name, tensor)), tensor)


def test_tied_embeddings_with_pipeline_stages_are_placed_like_megatron():
    layout = ParallelLayout(pp=2)
    conv = DistConverter({**MODEL, "vocab_size": 128, "tie_embeddings_and_output_weights": True}, layout)
    placed = [(c.pp_rank, name) for c, name in conv.placements("embedding.word_embeddings.weight")]
    assert placed == [(0, "embedding.word_embeddings.weight"), (1, "output_layer.weight")]
    last = conv.layout.chunks[-1]
    assert conv.canonical_name(last, "output_layer.weight") is None  # the copy, not a weight of its own
    assert conv.placements("decoder.layers.5.mlp.linear_fc2.weight") == [
        (last, "decoder.layers.1.mlp.linear_fc2.weight")
    ]


@pytest.mark.parametrize("model_type", sorted(TINY_MODELS))
@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_through_every_layout_is_bit_exact(model_type, tie, tiny_checkpoint, tmp_path):
    src = tiny_checkpoint(model_type, tie, num_hidden_layers=4)
    for name, layout in LAYOUTS.items():
        mca = tmp_path / name
        convert_hf_to_mca(src, mca, layout=layout, progress=False)
        meta = McaCheckpointMeta.load(mca)
        assert meta.layout == layout
        rank_files = sorted(p.parent.name for p in iteration_dir(mca).rglob("model_optim_rng.pt"))
        assert len(rank_files) == layout.tp * layout.pp
        convert_mca_to_hf(mca, tmp_path / f"{name}-hf", progress=False)
        assert compare_hf_dirs(src, tmp_path / f"{name}-hf") == [], name


def test_reshard_chains_are_bit_exact(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("qwen2", True, num_hidden_layers=4)
    convert_hf_to_mca(src, tmp_path / "tp2pp2", layout=LAYOUTS["tp2pp2"], progress=False)
    reshard_mca(tmp_path / "tp2pp2", tmp_path / "tp1pp4", LAYOUTS["pp4"], progress=False)
    convert_mca_to_hf(tmp_path / "tp1pp4", tmp_path / "hf1", progress=False)
    assert compare_hf_dirs(src, tmp_path / "hf1") == []
    # Through the CLI: tp1pp4 -> tp2pp2vpp2 -> tp4 -> tp1 -> HF.
    previous = tmp_path / "tp1pp4"
    for name, flags in [
        ("vpp", ["--tp", "2", "--pp", "2", "--vpp", "2"]),
        ("tp4", ["--tp", "4"]),
        ("tp1", ["--tp", "1"]),
    ]:
        assert main(["convert", str(previous), str(tmp_path / name), *flags]) == 0
        previous = tmp_path / name
    assert main(["convert", str(previous), str(tmp_path / "hf2")]) == 0
    assert compare_hf_dirs(src, tmp_path / "hf2") == []
    # Resharding to the layout the offline converter writes directly gives the same files.
    convert_hf_to_mca(src, tmp_path / "direct", layout=ParallelLayout(tp=4), progress=False)
    for rank in range(4):
        a = torch.load(torch_rank_file(tmp_path / "tp4", rank), weights_only=True)
        b = torch.load(torch_rank_file(tmp_path / "direct", rank), weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


def test_rank_files_are_megatron_lm_checkpoints_without_bloat(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("llama", num_hidden_layers=4)
    convert_hf_to_mca(src, tmp_path / "mca", layout=LAYOUTS["tp2pp2vpp2"], progress=False)
    files = sorted(iteration_dir(tmp_path / "mca").rglob("*.pt"))
    assert [f.parent.name for f in files] == [
        "mp_rank_00_000",
        "mp_rank_00_001",
        "mp_rank_01_000",
        "mp_rank_01_001",
    ]
    state = torch.load(files[3], map_location="cpu", weights_only=True)  # tp rank 1, pp rank 1
    assert state["checkpoint_version"] == 3.0 and state["iteration"] == 1
    assert sorted(k for k in state if k.startswith("model")) == ["model0", "model1"]
    # pp rank 1 holds layer 1 in chunk 0 and layer 3 in chunk 1, each as local layer 0.
    assert sorted({k.split(".")[2] for k in state["model1"] if k.startswith("decoder.layers.")}) == ["0"]
    assert (
        "output_layer.weight" in state["model1"] and "embedding.word_embeddings.weight" not in state["model0"]
    )
    assert state["model0"]["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (128, 64)
    stored = [torch.load(f, weights_only=True) for f in files]
    shard_bytes = sum(
        t.numel() * t.element_size()
        for state in stored
        for key in state
        if key.startswith("model")
        for t in state[key].values()
    )
    # Above the HF bytes only by the vocab padding (128 -> 256 rows at tp2) and the norms each
    # tp rank keeps; the files hold just their own slices (no shared storage written).
    padding = 2 * 128 * 64 * 4
    assert HFCheckpoint(src).nbytes() + padding < shard_bytes < HFCheckpoint(src).nbytes() * 1.1 + padding
    file_bytes = sum(f.stat().st_size for f in files)
    assert (
        shard_bytes
        < file_bytes
        < shard_bytes + 4 * 8192 + 1024 * sum(len(s["model0"]) + len(s["model1"]) for s in stored)
    )


def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_invalid_layout_fails_before_anything_is_written(tiny_checkpoint, tmp_path, capsys):
    src = tiny_checkpoint("llama")
    with pytest.raises(LayoutError, match="num_attention_heads=4 is not divisible by tp=3"):
        convert_hf_to_mca(src, tmp_path / "out", layout=ParallelLayout(tp=3), progress=False)
    assert main(["convert", str(src), str(tmp_path / "out"), "--pp", "2", "--vpp", "2"]) == 2
    assert "not divisible by pp x vpp = 2 x 2" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tp2pp2(tiny_checkpoint, tmp_path):
    mca = tmp_path / "mca"
    convert_hf_to_mca(tiny_checkpoint("llama"), mca, layout=LAYOUTS["tp2pp2"], progress=False)
    return mca


def _reshard_fails(src, tmp_path, error, match):
    dst = tmp_path / "out"  # an earlier output, which --force would replace
    dst.mkdir()
    (dst / "config.json").write_text("{}")
    with pytest.raises(error, match=match):
        reshard_mca(src, dst, ParallelLayout(), force=True, progress=False)
    assert _snapshot(dst) == {dst.joinpath("config.json").relative_to(dst): b"{}"}


def test_missing_rank_file_is_a_clear_error(tp2pp2, tmp_path):
    torch_rank_file(tp2pp2, 1, 1, 2).unlink()
    _reshard_fails(tp2pp2, tmp_path, CheckpointError, r"missing rank file .*mp_rank_01_001.*incomplete")


def test_truncated_rank_file_is_a_clear_error(tp2pp2, tmp_path):
    file = torch_rank_file(tp2pp2, 0, 1, 2)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    _reshard_fails(tp2pp2, tmp_path, CheckpointError, r"mp_rank_00_001.*truncated")


def test_mismatched_mca_config_is_a_clear_error(tp2pp2, tmp_path):
    config_file = tp2pp2 / "mca_config.json"
    original = json.loads(config_file.read_text())
    for field, value, error, match in [
        (
            "pipeline_model_parallel_size",
            1,
            CheckpointError,
            r"rank directories .*mca_config.json describes tp2pp1",
        ),
        (
            "tensor_model_parallel_size",
            1,
            CheckpointError,
            r"rank directories .*mca_config.json describes tp1pp2",
        ),
        ("num_layers", 4, ConversionError, r"lacks the tensors for .*decoder.layers.[13]"),
        # 3 heads over 2 key/value groups is no model at all: refused before the layout is looked at
        # (3 heads over tp=2 is test_bad_inputs' tp-not-dividing-heads)
        (
            "num_attention_heads",
            3,
            ConversionError,
            r"num_attention_heads=3 must be a multiple of num_query_groups=2",
        ),
    ]:
        config = json.loads(json.dumps(original))
        config["mca_config"][field] = value
        config_file.write_text(json.dumps(config))
        _reshard_fails(tp2pp2, tmp_path, error, match)
        shutil.rmtree(tmp_path / "out")


def test_converter_streams_one_weight_at_a_time(tiny_checkpoint):
    """The dry run reads only headers: meta tensors all the way to the planned shards."""
    from mcore_adapter.models.converter.convert import HFSource

    source = HFSource(tiny_checkpoint("qwen3"))
    planned = list(source.weights(meta=True))
    assert planned and all(t.device.type == "meta" for _, t in planned)
    assert get_template("qwen3").expected_mca_names(source.op_config) == {name for name, _ in planned}
