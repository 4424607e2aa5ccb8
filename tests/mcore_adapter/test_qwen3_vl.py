"""Qwen3-VL, Qwen3-VL-MoE and the hybrid Qwen3.5 / Qwen3.5-MoE (Gated DeltaNet decoder, the
same model class without deepstack) as GPTModel subclasses: logits parity with transformers for
text, images, video and both, a batch, and controls showing that deepstack and the interleaved
rope each matter; deepstack placement under pipeline parallelism; bit-exact round trips with the
vision weights (the deepstack mergers included)."""

from __future__ import annotations

import pytest
import torch

from mcore_adapter.models.converter.convert import convert_hf_to_mca, convert_mca_to_hf
from mcore_adapter.models.converter.layout import ParallelLayout
from mcore_adapter.models.mrope import mm_token_types
from mcore_adapter.parity import CONTROL_RTOL, LogitsDiff, compare_logits
from mcore_adapter.testing import VL_TOKENS, vl_prompt
from mcore_adapter.testing.compare import compare_hf_dirs

# fp32, eager attention on both sides; the vision tower is transformers' own module.
DEEPSTACK = ("qwen3_vl", "qwen3_vl_moe")  # Qwen3.5's tower has none
IMAGE, VIDEO = VL_TOKENS["image_token_id"], VL_TOKENS["video_token_id"]
PATCH_DIM = 3 * 2 * 14 * 14  # channels x temporal patch x patch^2

# Qwen3-VL's processor puts each video frame (temporal patch) between its own timestamp text,
# so a video of t patches is t placeholder groups, and its grid stays one row of video_grid_thw.
FRAME = ("video", (1, 4, 4))
CASES = {
    "text only": ([vl_prompt(12)], [], []),
    "one image": ([vl_prompt(3, ("image", (1, 4, 6)), 5)], [(1, 4, 6)], []),
    "two images of different sizes": (
        [vl_prompt(2, ("image", (1, 4, 4)), 3, ("image", (1, 2, 6)), 2)],
        [(1, 4, 4), (1, 2, 6)],
        [],
    ),
    "video": ([vl_prompt(4, FRAME, 2, FRAME, 3)], [], [(2, 4, 4)]),
    "image and video": (
        [vl_prompt(2, ("image", (1, 2, 4)), 2, FRAME, 1, FRAME, 2)],
        [(1, 2, 4)],
        [(2, 4, 4)],
    ),
    # Visual tokens at different positions per row: the decoder's [s, b] order differs from the
    # tower's [b, s] order of features.
    "batch of two": (
        [vl_prompt(1, ("image", (1, 2, 4)), 8), vl_prompt(6, ("image", (1, 4, 2)), 3)],
        [(1, 2, 4), (1, 4, 2)],
        [],
    ),
}
MODEL_TYPES = ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]


def pixels(grids, seed):
    patches = sum(t * h * w for t, h, w in grids)
    return torch.randn(patches, PATCH_DIM, generator=torch.Generator().manual_seed(seed))


def inputs(case: str) -> dict:
    rows, images, videos = CASES[case]
    out = {"input_ids": torch.tensor(rows)}
    if images:
        out.update(pixel_values=pixels(images, 0), image_grid_thw=torch.tensor(images))
    if videos:
        out.update(pixel_values_videos=pixels(videos, 1), video_grid_thw=torch.tensor(videos))
    return out


@pytest.fixture(scope="module", params=MODEL_TYPES)
def model_type(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(model_type, tiny_checkpoint):
    return tiny_checkpoint(model_type)


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def mca_model(checkpoint, megatron):
    from mcore_adapter import AutoModel

    return AutoModel.from_pretrained(checkpoint, dtype=torch.float32).eval()


def hf_logits(hf_model, batch):
    with torch.no_grad():
        return hf_model(**batch, mm_token_type_ids=mm_token_types(batch["input_ids"], IMAGE, VIDEO)).logits


def diff_with_hf(mca_model, hf_model, batch) -> LogitsDiff:
    expected = hf_logits(hf_model, batch)
    with torch.no_grad():
        actual = mca_model(**batch)[..., : expected.shape[-1]]
    return compare_logits(actual, expected)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, model_type, hf_model, mca_model, record_layout):
    from mcore_adapter.models.deepstack import DeepstackTransformerBlock

    assert isinstance(mca_model.decoder, DeepstackTransformerBlock) is (model_type in DEEPSTACK)
    diff = diff_with_hf(mca_model, hf_model, inputs(case))
    record_layout(model_type, False, "TP1", diff, diff.passed())
    assert diff.passed(), f"{case}: {diff.describe()}"


@pytest.mark.parametrize("model_type", DEEPSTACK, indirect=True)
def test_without_deepstack_the_logits_move(model_type, hf_model, mca_model, monkeypatch):
    """Control: the features added after the first layers matter (and only they are left out)."""
    from mcore_adapter.models.deepstack import Deepstack

    batch = inputs("one image")
    monkeypatch.setattr(Deepstack, "add", lambda self, layer, hidden: hidden)
    assert diff_with_hf(mca_model, hf_model, batch).relative > CONTROL_RTOL


def test_contiguous_mrope_sections_move_the_logits(model_type, hf_model, mca_model):
    """Control: Megatron's own (contiguous-section) multimodal rope, same frequencies, differs
    on an image prompt (text-only positions are equal on all three axes)."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding

    interleaved = mca_model.rotary_pos_emb
    config = mca_model.config
    contiguous = MultimodalRotaryEmbedding(
        kv_channels=config.kv_channels, rotary_percent=config.rotary_percent
    )
    contiguous.inv_freq = interleaved.inv_freq
    mca_model.rotary_pos_emb = contiguous
    try:
        assert diff_with_hf(mca_model, hf_model, inputs("one image")).relative > CONTROL_RTOL
        assert diff_with_hf(mca_model, hf_model, inputs("text only")).passed()
    finally:
        mca_model.rotary_pos_emb = interleaved


@pytest.mark.parametrize("model_type", DEEPSTACK, indirect=True)
def test_deepstack_layers_off_the_first_stage_are_refused(model_type, checkpoint, megatron):
    from mcore_adapter import AutoConfig
    from mcore_adapter.models.qwen3_vl.model import Qwen3VLModel

    config = AutoConfig.from_pretrained(checkpoint, pipeline_model_parallel_size=4)
    with pytest.raises(ValueError, match="num_layers_in_first_pipeline_stage >= 2"):
        Qwen3VLModel(config)


@pytest.mark.parametrize("model_type", DEEPSTACK, indirect=True)
def test_full_recompute_with_deepstack_is_refused(model_type, mca_model, monkeypatch):
    monkeypatch.setattr(mca_model.config, "recompute_granularity", "full")
    monkeypatch.setattr(mca_model.config, "recompute_method", "uniform")
    monkeypatch.setattr(mca_model.config, "recompute_num_layers", 1)
    mca_model.train()
    try:
        with pytest.raises(ValueError, match="recompute_granularity='full'"):
            mca_model(**inputs("one image"))
    finally:
        mca_model.eval()


def test_sequence_parallel_is_refused(checkpoint):
    from mcore_adapter import AutoConfig
    from mcore_adapter.models.converter.errors import ConversionError

    with pytest.raises(ConversionError, match="vision-language model cannot use sequence_parallel"):
        AutoConfig.from_pretrained(checkpoint, sequence_parallel=True, tensor_model_parallel_size=2)


@pytest.mark.parametrize("layout", [ParallelLayout(), ParallelLayout(tp=2, pp=2)], ids=["tp1", "tp2pp2"])
def test_round_trip_with_vision_weights_is_bit_exact(layout, model_type, checkpoint, tmp_path):
    report = convert_hf_to_mca(checkpoint, tmp_path / "mca", layout=layout, progress=False)
    assert any(name.startswith("vision_model.merger.") for name in report.produced)
    assert any(".deepstack_merger_list." in name for name in report.produced) is (model_type in DEEPSTACK)
    convert_mca_to_hf(tmp_path / "mca", tmp_path / "hf", progress=False)
    assert compare_hf_dirs(checkpoint, tmp_path / "hf") == []


def test_model_export_is_bit_exact(mca_model, checkpoint, tmp_path):
    mca_model.save_pretrained_as_hf(tmp_path / "hf")
    assert compare_hf_dirs(checkpoint, tmp_path / "hf") == []


# ------------------------------------------------------------------ Qwen3-VL-MoE's expert layouts
@pytest.fixture(scope="module")
def hub_moe_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny Qwen3-VL-MoE as the hub stores it: experts fused and transposed
    (``gate_up_proj [E, H, 2I]``, ``down_proj [E, I, H]``); transformers 5 saves ``[E, 2I, H]``."""
    from mcore_adapter.testing import save_with_transposed_fused_experts

    return save_with_transposed_fused_experts(
        tiny_checkpoint("qwen3_vl_moe"), tmp_path_factory.mktemp("hub") / "hf"
    )


def test_hub_layout_loads_matches_transformers_and_exports_itself(hub_moe_checkpoint, megatron, tmp_path):
    from transformers import AutoModelForImageTextToText

    from mcore_adapter import AutoModel
    from mcore_adapter.models.converter.hf_io import HFCheckpoint

    stored = HFCheckpoint(hub_moe_checkpoint, unfold_experts=True)
    assert stored.expert_layout == "fused_transposed"
    hf_model = AutoModelForImageTextToText.from_pretrained(
        hub_moe_checkpoint, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    model = AutoModel.from_pretrained(hub_moe_checkpoint, dtype=torch.float32).eval()
    assert diff_with_hf(model, hf_model, inputs("image and video")).passed()
    model.save_pretrained_as_hf(tmp_path / "hf")
    assert compare_hf_dirs(hub_moe_checkpoint, tmp_path / "hf") == []


def test_hub_layout_round_trips_offline_and_megatron_checkpoints_write_it(hub_moe_checkpoint, tmp_path):
    import json

    from mcore_adapter.models.converter.hf_io import HFCheckpoint

    convert_hf_to_mca(hub_moe_checkpoint, tmp_path / "mca", layout=ParallelLayout(ep=2), progress=False)
    convert_mca_to_hf(tmp_path / "mca", tmp_path / "hf", progress=False)
    assert compare_hf_dirs(hub_moe_checkpoint, tmp_path / "hf") == []
    # A Megatron checkpoint that does not say how its HF source stored the experts (as
    # Megatron-LM writes them) is written in the hub's layout: transformers reads no other.
    config = tmp_path / "mca" / "mca_config.json"
    config.write_text(
        json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "hf_expert_layout"})
    )
    convert_mca_to_hf(tmp_path / "mca", tmp_path / "hf_default", progress=False)
    assert HFCheckpoint(tmp_path / "hf_default", unfold_experts=True).expert_layout == "fused_transposed"
    assert compare_hf_dirs(hub_moe_checkpoint, tmp_path / "hf_default") == []


def test_hub_config_names_the_expert_count_num_experts(hub_moe_checkpoint):
    """Hub configs say ``text_config.num_experts``; transformers 5 saves ``num_local_experts``."""
    import json

    from mcore_adapter.models.converter.template import get_template

    saved = json.loads((hub_moe_checkpoint / "config.json").read_text())
    hub = json.loads(json.dumps(saved))
    hub["text_config"]["num_experts"] = hub["text_config"].pop("num_local_experts")
    template = get_template("qwen3_vl_moe")
    assert template.convert_hf_to_mca_config(hub) == template.convert_hf_to_mca_config(saved)
    assert template.convert_hf_to_mca_config(hub)["num_moe_experts"] == 4
