"""mrope of the Qwen-VL families against transformers: positions (Qwen2-VL, Qwen2.5-VL `get_rope_index`) and the interleaved rotary of Qwen3-VL."""

from __future__ import annotations

import pytest
import torch

from mcore_adapter.models.mrope import get_rope_index, mm_token_types
from mcore_adapter.testing import VL_TOKENS, vl_prompt

IMAGE, VIDEO = VL_TOKENS["image_token_id"], VL_TOKENS["video_token_id"]
START, END = VL_TOKENS["vision_start_token_id"], VL_TOKENS["vision_end_token_id"]
MERGE = 2


def hf_model(model_type: str):
    from transformers import AutoConfig, AutoModel

    text = {"vocab_size": 160, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    text.update(num_attention_heads=2, num_key_value_heads=1)
    vision = {"depth": 1, "hidden_size": 32, "num_heads": 2, "spatial_merge_size": MERGE}
    vision.update(
        {"embed_dim": 16, "mlp_ratio": 2}
        if model_type == "qwen2_vl"
        else {"intermediate_size": 32, "out_hidden_size": 32}
    )
    if model_type == "qwen3_vl":
        text.update(
            head_dim=16,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
        )
        vision.update(deepstack_visual_indexes=[0])
    config = AutoConfig.for_model(
        model_type,
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=START,
        vision_end_token_id=END,
    )
    return AutoModel.from_config(config)


CASES = {
    "text": ([vl_prompt(7)], None, None),
    "one image": ([vl_prompt(3, ("image", (1, 4, 6)), 5)], [[1, 4, 6]], None),
    "two images of different sizes": (
        [vl_prompt(2, ("image", (1, 4, 4)), 3, ("image", (1, 2, 6)), 2)],
        [[1, 4, 4], [1, 2, 6]],
        None,
    ),
    "video": ([vl_prompt(4, ("video", (3, 4, 4)), 2)], None, [[3, 4, 4]]),
    "batch with left padding": (
        [[0, 0, 0, *vl_prompt(1, ("image", (1, 2, 4)), 2)], vl_prompt(2, ("image", (1, 4, 2)), 1)],
        [[1, 2, 4], [1, 4, 2]],
        None,
    ),
}


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("case", list(CASES))
def test_positions_match_transformers(model_type, case):
    rows, images, videos = CASES[case]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    attention_mask = (torch.arange(width) >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
    if case == "batch with left padding":
        attention_mask[0, :3] = 0
    image_grid = torch.tensor(images) if images else None
    video_grid = torch.tensor(videos) if videos else None
    types = mm_token_types(input_ids, IMAGE, VIDEO)
    model = hf_model(model_type)
    kwargs = {}
    intervals = None
    if model_type == "qwen2_5_vl" and videos:
        kwargs["second_per_grid_ts"] = torch.tensor([2.0] * len(videos))
        intervals = [model.config.vision_config.tokens_per_second * 2.0] * len(videos)
    expected, expected_deltas = model.get_rope_index(
        input_ids, types, image_grid, video_grid, attention_mask=attention_mask, **kwargs
    )
    actual, deltas = get_rope_index(
        input_ids, types, MERGE, image_grid, video_grid, attention_mask, video_time_intervals=intervals
    )
    assert torch.equal(actual, expected)
    assert torch.equal(deltas, expected_deltas)
    if intervals:  # control: Qwen2.5-VL's frame spacing is not Qwen2-VL's
        unspaced, _ = get_rope_index(input_ids, types, MERGE, image_grid, video_grid, attention_mask)
        assert not torch.equal(unspaced, expected)


def _frames_apart(frames: int, tokens_per_frame: int) -> list[int]:
    """A Qwen3-VL video in a prompt: each frame after its timestamp text, in its own vision span."""
    return [t for f in range(frames) for t in (40 + f, 41, START, *[VIDEO] * tokens_per_frame, END)]


QWEN3_VL_CASES = {
    **{
        name: CASES[name]
        for name in ("text", "one image", "two images of different sizes", "batch with left padding")
    },
    "video, frames apart": ([[3, 4, *_frames_apart(3, 4), 2]], None, [[3, 4, 4]]),
    "image and video": (
        [vl_prompt(2, ("image", (1, 2, 4)), 1) + _frames_apart(2, 2)],
        [[1, 2, 4]],
        [[2, 2, 4]],
    ),
}


@pytest.mark.parametrize("case", list(QWEN3_VL_CASES))
def test_qwen3_vl_positions_match_transformers(case):
    rows, images, videos = QWEN3_VL_CASES[case]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    attention_mask = (torch.arange(width) >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
    image_grid = torch.tensor(images) if images else None
    video_grid = torch.tensor(videos) if videos else None
    types = mm_token_types(input_ids, IMAGE, VIDEO)
    expected, expected_deltas = hf_model("qwen3_vl").get_rope_index(
        input_ids,
        types,
        image_grid,
        None if video_grid is None else video_grid.clone(),
        attention_mask=attention_mask,
    )
    actual, deltas = get_rope_index(
        input_ids, types, MERGE, image_grid, video_grid, attention_mask, frames_apart=True
    )
    assert torch.equal(actual, expected)
    assert torch.equal(deltas, expected_deltas)
    if videos:  # control: read as one grid per video (Qwen2-VL), the frames' spans do not fit it
        with pytest.raises(ValueError, match="placeholder tokens at index"):
            get_rope_index(input_ids, types, MERGE, image_grid, video_grid, attention_mask)


def test_placeholders_without_a_grid_are_an_error():
    input_ids = torch.tensor([vl_prompt(2, ("image", (1, 2, 2)), 1)])
    with pytest.raises(ValueError, match="more image placeholders than image_grid_thw rows"):
        get_rope_index(input_ids, mm_token_types(input_ids, IMAGE, VIDEO), MERGE)
    with pytest.raises(ValueError, match="1 placeholder tokens .* gives 4"):
        get_rope_index(input_ids, mm_token_types(input_ids, IMAGE, VIDEO), MERGE, torch.tensor([[1, 4, 4]]))


# ---------------------------------------------------------------------- interleaved (Qwen3-VL)
def _qwen3_vl_rotary(head_dim: int, section: list[int], theta: float = 5000.0):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    config = Qwen3VLTextConfig(
        hidden_size=128,
        num_attention_heads=4,
        head_dim=head_dim,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": theta,
            "mrope_section": section,
            "mrope_interleaved": True,
        },
    )
    return Qwen3VLTextRotaryEmbedding(config)


@pytest.mark.parametrize(("head_dim", "section"), [(32, [6, 5, 5]), (64, [12, 10, 10]), (128, [24, 20, 20])])
def test_interleaved_mrope_matches_transformers_qwen3_vl(megatron, head_dim, section):
    from mcore_adapter.models.mrope_rotary import InterleavedMultimodalRotaryEmbedding

    positions = torch.randint(0, 400, (3, 2, 17), generator=torch.Generator().manual_seed(0))
    ours = InterleavedMultimodalRotaryEmbedding(kv_channels=head_dim, rotary_percent=1.0, rotary_base=5000)
    angles = ours(positions, section)  # [seq, batch, 1, dim]
    hf_cos, hf_sin = _qwen3_vl_rotary(head_dim, section)(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = angles[:, :, 0].transpose(0, 1).cos(), angles[:, :, 0].transpose(0, 1).sin()
    torch.testing.assert_close(cos, hf_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, hf_sin, atol=1e-6, rtol=0)
    # control: Megatron's contiguous sections (Qwen2-VL's layout) give other angles
    from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding

    contiguous = MultimodalRotaryEmbedding(kv_channels=head_dim, rotary_percent=1.0, rotary_base=5000)
    assert (contiguous(positions, section)[:, :, 0].transpose(0, 1).cos() - hf_cos).abs().max() > 1e-2


def test_interleaved_mrope_refuses_sections_that_do_not_cover_the_frequencies(megatron):
    from mcore_adapter.models.mrope_rotary import InterleavedMultimodalRotaryEmbedding

    ours = InterleavedMultimodalRotaryEmbedding(kv_channels=32, rotary_percent=1.0)
    with pytest.raises(ValueError, match=r"mrope_section \[4, 4, 4\] must cover the 16 rotary frequencies"):
        ours(torch.zeros(3, 1, 4, dtype=torch.long), [4, 4, 4])
