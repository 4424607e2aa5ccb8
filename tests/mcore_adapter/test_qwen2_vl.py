"""Qwen2-VL and Qwen2.5-VL as GPTModel subclasses with transformers' vision towers: logits
parity with ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` for
text, images and video, and bit-exact round trips that include the vision weights."""

from __future__ import annotations

import pytest
import torch

from mcore_adapter.models.converter.convert import convert_hf_to_mca, convert_mca_to_hf
from mcore_adapter.models.converter.layout import ParallelLayout
from mcore_adapter.models.mrope import mm_token_types
from mcore_adapter.parity import CONTROL_RTOL, compare_logits
from mcore_adapter.testing import VL_TOKENS, vl_prompt
from mcore_adapter.testing.compare import compare_hf_dirs

# fp32, eager attention on both sides, and the vision tower is transformers' own module.
IMAGE, VIDEO = VL_TOKENS["image_token_id"], VL_TOKENS["video_token_id"]
MERGE, PATCH_DIM = 2, 3 * 2 * 14 * 14  # spatial merge; channels x temporal patch x patch^2


def pixels(grids, seed):
    patches = sum(t * h * w for t, h, w in grids)
    return torch.randn(patches, PATCH_DIM, generator=torch.Generator().manual_seed(seed))


CASES = {
    "text only": (vl_prompt(12), [], []),
    "one image": (vl_prompt(3, ("image", (1, 4, 6)), 5), [(1, 4, 6)], []),
    "two images of different sizes": (
        vl_prompt(2, ("image", (1, 4, 4)), 3, ("image", (1, 2, 6)), 2),
        [(1, 4, 4), (1, 2, 6)],
        [],
    ),
    "video": (vl_prompt(4, ("video", (2, 4, 4)), 3), [], [(2, 4, 4)]),
}


def inputs(case: str, model_type: str = "qwen2_vl") -> dict:
    ids, images, videos = CASES[case]
    out = {"input_ids": torch.tensor([ids])}
    if images:
        out.update(pixel_values=pixels(images, 0), image_grid_thw=torch.tensor(images))
    if videos:
        out.update(pixel_values_videos=pixels(videos, 1), video_grid_thw=torch.tensor(videos))
        if model_type == "qwen2_5_vl":  # frames 1.5 s apart: rope time steps of 3 (2 tokens/s)
            out.update(second_per_grid_ts=torch.tensor([1.5] * len(videos)))
    return out


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def model_type(request):
    return request.param


@pytest.fixture(scope="module")
def qwen2_vl(model_type, tiny_checkpoint):
    return tiny_checkpoint(model_type)


@pytest.fixture(scope="module")
def hf_model(qwen2_vl):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(
        qwen2_vl, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def mca_model(qwen2_vl, megatron):
    from mcore_adapter import AutoModel

    return AutoModel.from_pretrained(qwen2_vl, dtype=torch.float32).eval()


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, model_type, hf_model, mca_model, record_layout):
    from mcore_adapter.models.qwen2_5_vl.model import Qwen2_5_VLModel
    from mcore_adapter.models.qwen2_vl.model import Qwen2VLModel

    assert type(mca_model) is {"qwen2_vl": Qwen2VLModel, "qwen2_5_vl": Qwen2_5_VLModel}[model_type]
    batch = inputs(case, model_type)
    types = mm_token_types(batch["input_ids"], IMAGE, VIDEO)
    with torch.no_grad():
        expected = hf_model(**batch, mm_token_type_ids=types).logits
        actual = mca_model(**batch)[..., : expected.shape[-1]]
    diff = compare_logits(actual, expected)
    record_layout(model_type, False, "TP1", diff, diff.passed())
    assert diff.passed(), f"{case}: {diff.describe()}"


def test_vision_inputs_change_the_logits(hf_model, mca_model):
    """Control: the image really goes through the tower (zeroed pixels move the logits)."""
    batch = inputs("one image")
    with torch.no_grad():
        with_image = mca_model(**batch)
        zeroed = mca_model(**{**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])})
    assert compare_logits(zeroed, with_image).relative > CONTROL_RTOL


def test_placeholder_count_must_match_the_grid(mca_model):
    batch = inputs("one image")
    with pytest.raises(ValueError, match="placeholder"):
        mca_model(
            batch["input_ids"],
            pixel_values=batch["pixel_values"][:8],
            image_grid_thw=torch.tensor([[1, 2, 4]]),
        )


@pytest.mark.parametrize("layout", [ParallelLayout(), ParallelLayout(tp=2, pp=2)], ids=["tp1", "tp2pp2"])
def test_round_trip_with_vision_weights_is_bit_exact(layout, qwen2_vl, tmp_path):
    report = convert_hf_to_mca(qwen2_vl, tmp_path / "mca", layout=layout, progress=False)
    assert any(name.startswith("vision_model.") for name in report.produced)
    convert_mca_to_hf(tmp_path / "mca", tmp_path / "hf", progress=False)
    assert compare_hf_dirs(qwen2_vl, tmp_path / "hf") == []


def test_model_export_is_bit_exact(mca_model, qwen2_vl, tmp_path):
    mca_model.save_pretrained_as_hf(tmp_path / "hf")
    assert compare_hf_dirs(qwen2_vl, tmp_path / "hf") == []


def test_verify_cli_text_by_default_and_image_on_request(qwen2_vl, megatron, tiny_checkpoint, capsys):
    from mcore_adapter.cli import main
    from mcore_adapter.parity import FP32_RTOL

    for flags, tokens in (([], "2 x 16 random text tokens"), (["--image"], "6 image placeholders")):
        assert main(["verify", str(qwen2_vl), *flags]) == 0
        out = capsys.readouterr().out
        assert tokens in next(line for line in out.splitlines() if line.startswith("tokens: "))
        verdict, *fields = out.strip().splitlines()[-1].split()
        assert verdict == "PASS" and float(dict(f.split("=", 1) for f in fields)["max_rel_diff"]) <= FP32_RTOL
    assert main(["verify", str(tiny_checkpoint("llama")), "--image"]) == 2
    assert "--image needs a vision-language checkpoint" in capsys.readouterr().err
