"""3-D multimodal rope positions (mrope) of the Qwen2-VL family, computed before forward.

Text tokens advance one position on all three axes (temporal, height, width); the tokens of an
image or video get a (t, h, w) grid of positions starting where the text stopped, and the text
after it continues from the grid's largest spatial extent. Qwen2.5-VL spaces video frames in
time (``tokens_per_second`` x seconds per temporal patch); Qwen2-VL spaces them by one.
This matches transformers' ``get_rope_index`` of both models (tested against them).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

TEXT, IMAGE, VIDEO = 0, 1, 2


def mm_token_types(input_ids: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """0 for text, 1 for image and 2 for video placeholder tokens (the processor's
    ``mm_token_type_ids``)."""
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == image_token_id] = IMAGE
    types[input_ids == video_token_id] = VIDEO
    return types


def _grid_positions(start: int, grid_thw: Sequence[int], merge: int, time_interval: float) -> torch.Tensor:
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    temporal = (torch.arange(t) * time_interval).long() + start
    grid = torch.meshgrid(temporal, torch.arange(h) + start, torch.arange(w) + start, indexing="ij")
    return torch.stack(grid).reshape(3, -1)


def get_rope_index(
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    spatial_merge_size: int,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    video_time_intervals: Sequence[float] | None = None,
    frames_apart: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids ``[3, batch, seq]`` and each sequence's ``max position + 1 - length``
    (``[batch, 1]``, what generation adds to later positions).

    ``video_time_intervals`` gives each video's spacing of temporal patches (Qwen2.5-VL:
    ``tokens_per_second * second_per_grid_t``); ``None`` spaces them by one (Qwen2-VL).
    ``frames_apart`` (Qwen3-VL): each temporal patch of a video is its own placeholder group,
    between timestamp text, positioned as a one-frame grid where the text left off.
    Padding (``attention_mask == 0``) gets position 0.
    """
    if frames_apart and video_grid_thw is not None:
        video_grid_thw = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0)
        video_grid_thw[:, 0] = 1
    grids = {
        IMAGE: iter(image_grid_thw.tolist() if image_grid_thw is not None else []),
        VIDEO: iter(video_grid_thw.tolist() if video_grid_thw is not None else []),
    }
    intervals = iter(video_time_intervals) if video_time_intervals is not None else itertools.repeat(1)
    position_ids = torch.zeros((3, *input_ids.shape), dtype=input_ids.dtype)
    deltas = []
    for row in range(input_ids.shape[0]):
        keep = (
            attention_mask[row].bool()
            if attention_mask is not None
            else torch.ones_like(input_ids[row], dtype=torch.bool)
        )
        types = mm_token_type_ids[row][keep].tolist()
        parts, pos, index = [], 0, 0
        for kind, group in itertools.groupby(types):
            length = len(list(group))
            if kind == TEXT:
                parts.append(torch.arange(pos, pos + length).expand(3, -1))
                pos += length
            else:
                grid = next(grids[kind], None)
                if grid is None:
                    kind_name = "image" if kind == IMAGE else "video"
                    raise ValueError(
                        f"sequence {row} has more {kind_name} placeholders than {kind_name}_grid_thw rows"
                    )
                interval = next(intervals) if kind == VIDEO else 1
                block = _grid_positions(pos, grid, spatial_merge_size, interval)
                if block.shape[1] != length:
                    raise ValueError(
                        f"sequence {row}: {length} placeholder tokens at index {index}, the grid {grid} with "
                        f"spatial_merge_size {spatial_merge_size} gives {block.shape[1]}"
                    )
                parts.append(block)
                pos += max(grid[1], grid[2]) // spatial_merge_size
            index += length
        positions = torch.cat(parts, dim=1) if parts else torch.zeros((3, 0), dtype=torch.long)
        position_ids[:, row, keep] = positions.to(position_ids.dtype)
        deltas.append(int(positions.max()) + 1 - len(types) if len(types) else 0)
    return position_ids, torch.tensor(deltas).unsqueeze(1)
